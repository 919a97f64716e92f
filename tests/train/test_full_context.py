"""Batched full-context loss: one right-padded decoder forward gives exactly the mean of the
per-example streaming answer losses (FullMemory), values and gradients, for Omni (TMRoPE, media)
and a plain text LM (1-D RoPE)."""

import numpy as np
import pytest
import torch

from omnimem_train.memory.policies.full import FullMemory
from omnimem_train.models.base import MediaInput, Modality, StreamPiece
from omnimem_train.models.builtin import build_tiny_model
from omnimem_train.models.prompt import split_chat_prompt
from omnimem_train.models.qwen2_5_omni import Qwen2_5OmniAdapter
from omnimem_train.models.text_lm import TextLMAdapter
from omnimem_train.streaming.answer import answer_loss
from omnimem_train.streaming.engine import StreamingEngine
from omnimem_train.train.full_context import Sequence, full_context_loss, pad_batch
from tests.memory.streams import random_media

QUESTIONS = [
    ("What colour?\nA. red\nB. blue", "B. blue"),
    ("Which shape is shown on the screen at the very end of the clip?", "a small square"),
    ("Count?", "3"),
]


def _omni_media(seed, seconds):
    frames, mel = random_media(seconds, seed=seed)
    return MediaInput(frames=iter(frames), fps=2.0, mel_windows=iter([mel]), duration_s=len(frames) / 2)


def _text_media(seed, n_segments):
    words = ["red", "square", "moves", "left", "a", "tone", "plays", "then", "stops", "blue"]
    rng = np.random.default_rng(seed)
    segs = []
    for i in range(n_segments):
        text = " ".join(rng.choice(words, size=3 + i))
        segs.append((Modality.VISUAL if i % 2 == 0 else Modality.AUDIO, text))
    return MediaInput(context=segs)


def _examples(ad, make_media, specs):
    """Fresh (pieces, q_ids, a_ids) per example: the stream is built with autograd on, so the
    text embeddings (and encoders) are part of the graph."""
    out = []
    for (seed, size), (question, answer) in zip(specs, QUESTIONS, strict=True):
        prefix, q_ids = split_chat_prompt(ad.tokenizer, "You watch.", question)
        a_ids = ad.tokenizer(answer, add_special_tokens=False)["input_ids"] + [ad.tokenizer.eos_token_id]
        out.append((list(ad.stream(make_media(seed, size), prefix)), q_ids, a_ids))
    return out


def _grads(model, names):
    params = dict(model.named_parameters())
    return {n: params[n].grad.detach().clone() for n in names}


def _batched_vs_streaming(model, ad, make_media, specs, group_size, param_names):
    model.zero_grad()
    examples = _examples(ad, make_media, specs)
    lengths = [sum(len(p) for p in pieces) for pieces, _, _ in examples]
    assert len(set(lengths)) == len(lengths)  # really different stream lengths: padding is exercised
    assert len({len(q) for _, q, _ in examples}) == 3 and len({len(a) for _, _, a in examples}) == 3
    calls = []
    real = ad.decoder_hidden

    def counting(embeds, positions, mask, layer_adds=None):
        calls.append(tuple(embeds.shape))
        return real(embeds, positions, mask, layer_adds)

    ad.decoder_hidden = counting
    try:
        batched = full_context_loss(ad, [Sequence(p, [(q, a)]) for p, q, a in examples])
    finally:
        del ad.decoder_hidden
    assert len(calls) == 1 and calls[0][0] == 3  # one forward for the whole batch
    batched.backward()
    g_batched = _grads(model, param_names)

    model.zero_grad()
    losses = []
    for pieces, q_ids, a_ids in _examples(ad, make_media, specs):
        engine = StreamingEngine(ad, FullMemory(), group_size=group_size)
        state, _ = engine.prefill(iter(pieces))
        assert state.groups > 1  # the reference really streams
        losses.append(answer_loss(engine, state, q_ids, a_ids))
    reference = torch.stack(losses).mean()
    reference.backward()
    g_ref = _grads(model, param_names)

    assert abs(batched.item() - reference.item()) <= 1e-5, (batched.item(), reference.item())
    for n in param_names:
        assert g_ref[n].abs().sum() > 0, n  # the parameter really receives gradient
        assert torch.allclose(g_batched[n], g_ref[n], atol=1e-5, rtol=0), (n, (g_batched[n] - g_ref[n]).abs().max())
    return batched, losses


def test_omni_batched_loss_and_gradients_equal_streaming():
    model, tok = build_tiny_model("tiny-omni", seed=1)
    model.eval()  # no dropout either way
    ad = Qwen2_5OmniAdapter(model, tok)
    names = [
        "model.language_model.embed_tokens.weight",
        "model.language_model.layers.1.self_attn.q_proj.weight",
        "model.language_model.layers.3.mlp.down_proj.weight",
        "lm_head.weight",
        "model.audio_tower.conv1.weight",  # the stream is built with autograd on: encoders too
        "model.visual.patch_embed.proj.weight",
    ]
    _, losses = _batched_vs_streaming(model, ad, _omni_media, [(1, 2.0), (2, 3.0), (3, 4.0)],
                                            group_size=29, param_names=names)
    # the examples differ, so a wrong pairing of rows and answer spans would show
    assert max(x.item() for x in losses) - min(x.item() for x in losses) > 1e-3


def test_text_lm_batched_loss_and_gradients_equal_streaming():
    model, tok = build_tiny_model("tiny-llama", seed=2)
    model.eval()
    ad = TextLMAdapter(model, tok)
    names = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
             "model.layers.2.self_attn.v_proj.weight", "lm_head.weight"]
    _, losses = _batched_vs_streaming(model, ad, _text_media, [(1, 2), (2, 5), (3, 3)],
                                      group_size=7, param_names=names)
    assert max(x.item() for x in losses) - min(x.item() for x in losses) > 1e-3


def test_batched_loss_is_the_mean_not_a_token_weighted_mean():
    """Examples with different answer lengths weigh equally (mean over examples of per-example means)."""
    model, tok = build_tiny_model("tiny-llama", seed=3)
    ad = TextLMAdapter(model, tok)
    seqs = []
    with torch.no_grad():
        for i, answer in enumerate([[5], [6, 7, 8, 9, 10, 11, 12]]):
            seqs.append(Sequence([ad.text_piece([20 + i, 21, 22], 0)], [([30, 31], answer)]))
        both = full_context_loss(ad, seqs).item()
        singles = [full_context_loss(ad, [s]).item() for s in seqs]
    assert abs(both - sum(singles) / 2) <= 1e-5
    assert abs(singles[0] - singles[1]) > 1e-3


@pytest.mark.parametrize("family", ["omni", "llama"])
def test_packed_questions_equal_one_row_per_question(family):
    """k questions packed after one stream (4-D mask) give each question's own loss and the same
    gradients as k separate rows; streams of different lengths and question counts share the batch."""
    if family == "omni":
        model, tok = build_tiny_model("tiny-omni", seed=4)
        ad, make_media, specs = Qwen2_5OmniAdapter(model, tok), _omni_media, [(1, 2.0), (2, 3.0)]
        names = ["model.language_model.layers.1.self_attn.q_proj.weight", "model.audio_tower.conv1.weight"]
    else:
        model, tok = build_tiny_model("tiny-llama", seed=4)
        ad, make_media, specs = TextLMAdapter(model, tok), _text_media, [(1, 2), (2, 5)]
        names = ["model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight"]
    model.eval()
    questions = [[([40, 41, 42], [50, 51]), ([43], [52, 53, 54]), ([44, 45], [55])], [([46, 47], [56])]]

    def loss(packed):
        prefix, _ = split_chat_prompt(ad.tokenizer, "You watch.", "?")
        streams = [list(ad.stream(make_media(seed, size), prefix)) for seed, size in specs]
        if packed:
            seqs = [Sequence(p, qs) for p, qs in zip(streams, questions)]
        else:
            seqs = [Sequence(p, [qa]) for p, qs in zip(streams, questions) for qa in qs]
        model.zero_grad()
        value = full_context_loss(ad, seqs)
        value.backward()
        return value.item(), _grads(model, names)

    (packed, g_packed), (single, g_single) = loss(True), loss(False)
    assert abs(packed - single) <= 1e-5, (packed, single)
    for n in names:
        assert g_single[n].abs().sum() > 0, n
        torch.testing.assert_close(g_packed[n], g_single[n], atol=1e-5, rtol=0, msg=n)


def test_packed_mask_sees_the_stream_and_its_own_question_only():
    from omnimem_train.train.full_context import packed_mask

    pad = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    mask = packed_mask([[0, 0, 1, 1, 2, 2], [0, 1, 1]], pad, torch.float32)[:, 0] == 0  # (B, L, L) allowed
    assert mask.shape == (2, 6, 6)
    assert mask[0, 4].tolist() == [True, True, False, False, True, False]  # stream + own question, causal
    assert mask[0, 3].tolist() == [True, True, True, True, False, False]
    assert mask[1, 2].tolist() == [True, True, True, False, False, False]
    assert mask[1, 4].tolist() == [False, False, False, False, True, False]  # padding sees only itself


def test_pad_batch_shapes_mask_and_contents():
    d = 4
    rows = []
    for n, p0 in ((2, 0), (5, 10), (3, 100)):
        rows.append(StreamPiece(torch.randn(n, d), torch.zeros(n, dtype=torch.long),
                                torch.arange(p0, p0 + 3 * n).view(3, n)))
    embeds, positions, mask, adds = pad_batch(rows)
    assert adds is None  # no row carries layer_adds
    assert embeds.shape == (3, 5, d) and positions.shape == (3, 3, 5) and mask.shape == (3, 5)
    assert mask.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    for b, r in enumerate(rows):
        n = len(r)
        assert torch.equal(embeds[b, :n], r.embeds) and torch.equal(positions[:, b, :n], r.positions)
        assert embeds[b, n:].abs().sum() == 0 and positions[:, b, n:].abs().sum() == 0  # right padding
    assert embeds.dtype == rows[0].embeds.dtype and positions.dtype == torch.long


def test_pad_batch_keeps_dtype_and_gradients():
    leaf = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    rows = [StreamPiece(leaf, torch.zeros(2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long)),
            StreamPiece(torch.zeros(4, 3, dtype=torch.float64), torch.zeros(4, dtype=torch.long),
                        torch.zeros(1, 4, dtype=torch.long))]
    embeds, positions, mask, _ = pad_batch(rows)
    assert embeds.dtype == torch.float64 and positions.shape == (1, 2, 4)
    embeds.sum().backward()
    assert torch.equal(leaf.grad, torch.ones_like(leaf))


def test_pad_batch_carries_layer_adds_padded_with_zeros():
    """Rows with layer_adds of different depths, and a row without any: (K, B, L, D) with K the
    deepest, each row's features in place and zeros everywhere else (padding, missing layers)."""
    d = 3
    deep2 = torch.randn(2, 4, d, dtype=torch.float64, requires_grad=True)
    deep1 = torch.randn(1, 2, d, dtype=torch.float64)
    rows = [StreamPiece(torch.zeros(4, d, dtype=torch.float64), torch.zeros(4, dtype=torch.long),
                        torch.zeros(3, 4, dtype=torch.long), layer_adds=deep2),
            StreamPiece(torch.zeros(3, d, dtype=torch.float64), torch.zeros(3, dtype=torch.long),
                        torch.zeros(3, 3, dtype=torch.long)),
            StreamPiece(torch.zeros(2, d, dtype=torch.float64), torch.zeros(2, dtype=torch.long),
                        torch.zeros(3, 2, dtype=torch.long), layer_adds=deep1)]
    _, _, mask, adds = pad_batch(rows)
    assert adds.shape == (2, 3, 4, d) and adds.dtype == torch.float64
    assert torch.equal(adds[:, 0], deep2)
    assert adds[:, 1].abs().sum() == 0  # a row without features
    assert torch.equal(adds[0, 2, :2], deep1[0]) and adds[0, 2, 2:].abs().sum() == 0  # right padding
    assert adds[1, 2].abs().sum() == 0  # a layer the row has no features for
    adds.sum().backward()
    assert torch.equal(deep2.grad, torch.ones_like(deep2))  # the features keep their gradient


def test_single_example_equals_answer_loss_without_media():
    """A text-only context (no media) on Omni: full-context loss == streaming answer loss."""
    model, tok = build_tiny_model("tiny-omni", seed=4)
    ad = Qwen2_5OmniAdapter(model, tok)
    prefix, q_ids = split_chat_prompt(tok, "sys", "q?")
    a_ids = tok("yes", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        got = full_context_loss(ad, [Sequence([ad.text_piece(prefix, 0)], [(q_ids, a_ids)])]).item()
        engine = StreamingEngine(ad, FullMemory(), group_size=5)
        state, _ = engine.prefill(iter([ad.text_piece(prefix, 0)]))
        ref = answer_loss(engine, state, q_ids, a_ids).item()
    assert abs(got - ref) <= 1e-5
