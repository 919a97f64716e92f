"""After the stream: run the question over each layer's memory, then decode or score options.

Decoding passes every new token's *explicit* position (`state.next_pos`): after eviction the
memory is shorter than the stream, so a position derived from the cache length would be wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from omnimem_train.streaming.engine import StreamingEngine, StreamState


@torch.no_grad()
def generate(engine: StreamingEngine, state: StreamState, question_ids: list[int], max_new_tokens: int,
             eos_ids: list[int], on_token: Callable[[int], None] | None = None) -> list[int]:
    """Greedy decoding. The question and the generated tokens are committed to `state`."""
    out: list[int] = []
    for tok in iter_generate(engine, state, question_ids, max_new_tokens, eos_ids):
        out.append(tok)
        if on_token is not None:
            on_token(tok)
    return out


@torch.no_grad()
def iter_generate(engine: StreamingEngine, state: StreamState, question_ids: list[int], max_new_tokens: int,
                  eos_ids: list[int]) -> Iterator[int]:
    """`generate` as a lazy iterator: each greedy token id as soon as it is chosen (the next
    token's forward runs only when the consumer asks for it)."""
    ad = engine.adapter
    logits = engine.forward(state, ad.text_piece(question_ids, state.next_pos), want_logits="last")
    for step in range(max_new_tokens):
        tok = int(logits.argmax())
        if tok in eos_ids:
            return
        yield tok
        if step + 1 < max_new_tokens:  # the last token needs no forward of its own
            logits = engine.forward(state, ad.text_piece([tok], state.next_pos), want_logits="last")


def iter_text(tokenizer, token_ids: Iterator[int], ids: list[int] | None = None) -> Iterator[str]:
    """The newly decodable text after each token (byte-level BPE can split a character over tokens),
    then whatever the last tokens complete. `ids`, if given, collects the token ids consumed."""
    ids = [] if ids is None else ids
    text = ""
    for token in token_ids:
        ids.append(token)
        new = tokenizer.decode(ids, skip_special_tokens=True)
        if not new.endswith("\ufffd") and len(new) > len(text):
            yield new[len(text):]
            text = new
    final = tokenizer.decode(ids, skip_special_tokens=True) if ids else ""
    if len(final) > len(text):
        yield final[len(text):]


@torch.no_grad()
def score_options(engine: StreamingEngine, state: StreamState, question_ids: list[int],
                  options_ids: list[list[int]]) -> list[float]:
    """Total log-likelihood of each option's tokens after the question (memory left unchanged
    by the options: each is scored as an uncommitted continuation)."""
    ad = engine.adapter
    q_logits = engine.forward(state, ad.text_piece(question_ids, state.next_pos), want_logits="last")
    first = torch.log_softmax(q_logits.float(), -1)
    scores = []
    for ids in options_ids:
        ll = float(first[ids[0]])
        if len(ids) > 1:
            logits = engine.forward(state, ad.text_piece(ids[:-1], state.next_pos), commit=False, want_logits="all")
            logp = torch.log_softmax(logits.float(), -1)
            ll += float(logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())
        scores.append(ll)
    return scores


def answer_loss(engine: StreamingEngine, state: StreamState, question_ids: list[int],
                answer_ids: list[int]) -> torch.Tensor:
    """Mean cross-entropy of `answer_ids` given the stream's memory and the question (the answer
    tokens only; nothing is committed). Differentiable through the retained memory."""
    ad = engine.adapter
    ids = list(question_ids) + list(answer_ids)
    logits = engine.forward(state, ad.text_piece(ids[:-1], state.next_pos), commit=False, want_logits="all")
    targets = torch.tensor(answer_ids, device=logits.device)
    return torch.nn.functional.cross_entropy(logits[len(question_ids) - 1 :].float(), targets)
