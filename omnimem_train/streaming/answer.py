"""After the stream: run the question over each layer's memory, then decode or score options.

`ask` is the one answering path (offline `infer`, the eval grid and the live session call it) and
`Answer` its one result type. Decoding passes every new token's *explicit* position (`state.next_pos`): after eviction the
memory is shorter than the stream, so a position derived from the cache length would be wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from omnimem_train.memory.report import MemoryReport
from omnimem_train.models.prompt import LETTERS, option_text, question_prompt
from omnimem_train.streaming.engine import StreamingEngine, StreamState


class Answer:
    """What `ask` returns. Iterate it for the answer's text pieces as they are generated (decoding
    runs while you iterate; iterating again replays them); `text` is the whole answer. `report`: the
    memory the question ran over. For multiple choice, `option_scores` (one log-likelihood per
    option) and `choice` (its letter). `stream_seconds`: wall time of streaming the media, when the
    caller measured it."""

    def __init__(self, pieces: Iterator[str], report: MemoryReport, option_scores: list[float] | None = None,
                 choice: str | None = None, stream_seconds: float | None = None):
        self._source, self._pieces = pieces, []
        self.report, self.option_scores, self.choice = report, option_scores, choice
        self.stream_seconds = stream_seconds

    def __iter__(self) -> Iterator[str]:
        yield from list(self._pieces)
        for piece in self._source:
            self._pieces.append(piece)
            yield piece

    @property
    def text(self) -> str:
        return "".join(self)

    def to_dict(self) -> dict:
        return {"answer": self.text, "choice": self.choice, "option_scores": self.option_scores,
                "stream_seconds": self.stream_seconds, "memory": self.report.to_dict()}


@torch.no_grad()
def ask(engine: StreamingEngine, state: StreamState, question: str, options: list[str] | None = None, *,
        system_prompt: str = "", answer_format: str = "letter", max_new_tokens: int = 32,
        stream_seconds: float | None = None) -> Answer:
    """Answer `question` over the memory in `state` (which it extends by the question and the
    answer: pass a copy to keep it). With `options`, each is scored by log-likelihood as written in
    `answer_format` (`prompt.ANSWER_FORMATS`, which must match the training target) and the best
    letter is the choice; otherwise greedy decoding, lazily as the `Answer` is iterated."""
    tok = engine.adapter.tokenizer
    _, q_ids = question_prompt(tok, system_prompt, question, options, answer_format)
    report = state.report()
    if options:
        opts = [tok(option_text(options, i, answer_format), add_special_tokens=False)["input_ids"]
                for i in range(len(options))]
        scores = score_options(engine, state, q_ids, opts)
        best = max(range(len(options)), key=scores.__getitem__)
        return Answer(iter([f"{LETTERS[best]}. {options[best]}"]), report, scores, LETTERS[best], stream_seconds)
    ids = iter_generate(engine, state, q_ids, max_new_tokens, engine.adapter.eos_token_ids)
    return Answer(iter_text(tok, ids), report, stream_seconds=stream_seconds)


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
