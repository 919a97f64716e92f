"""Training through the streaming forward: exact with an unlimited budget, gradients reach earlier
groups through the retained memory, and per-group checkpointing changes nothing."""

import pytest
import torch

from omnimem_train.config.schema import Config
from omnimem_train.memory.policy import MemoryPolicy
from omnimem_train.memory.registry import make_policy
from omnimem_train.models.base import MediaInput, Modality
from omnimem_train.models.builtin import build_tiny_model
from omnimem_train.models.prompt import split_chat_prompt
from omnimem_train.models.qwen2_5_omni import Qwen2_5OmniAdapter
from omnimem_train.streaming.answer import answer_loss
from omnimem_train.streaming.engine import StreamingEngine
from omnimem_train.train.lora import prepare_model
from tests.memory.streams import random_media
from tests.streaming.omni_inputs import full_inputs


@pytest.fixture()
def lora_omni():
    model, tok = build_tiny_model("tiny-omni", seed=1)
    peft_model = prepare_model(model, Config(lora_rank=4, lora_dropout=0.0))
    # LoRA B starts at zero; give it values so LoRA A receives gradients too.
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return peft_model, Qwen2_5OmniAdapter(model, tok)


def _media(seed=0, seconds=4.0):
    return random_media(seconds, seed=seed)


def _stream(ad, frames, mel, prefix):
    media = MediaInput(frames=iter(frames), fps=2.0, mel_windows=iter([mel]), duration_s=len(frames) / 2)
    with torch.no_grad():
        return list(ad.stream(media, prefix))


def _loss(ad, policy, pieces, q_ids, a_ids, group_size, checkpoint):
    engine = StreamingEngine(ad, policy, group_size=group_size)
    state, _ = engine.prefill(iter(pieces), checkpoint=checkpoint)
    return answer_loss(engine, state, q_ids, a_ids), state


@pytest.mark.parametrize("checkpoint", [False, True])
def test_unlimited_budget_loss_equals_plain_full_context_loss(lora_omni, checkpoint):
    peft_model, ad = lora_omni
    frames, mel = _media()
    prefix, q_ids = split_chat_prompt(ad.tokenizer, "You watch.", "What colour?\nA. red\nB. blue")
    a_ids = ad.tokenizer("B. blue", add_special_tokens=False)["input_ids"] + [ad.tokenizer.eos_token_id]
    policy = make_policy("omnimem", len(ad.decoder_layers))  # no budget: nothing is evicted
    got, _ = _loss(ad, policy, _stream(ad, frames, mel, prefix), q_ids, a_ids, group_size=23, checkpoint=checkpoint)

    input_ids, kw = full_inputs(ad.tokenizer, prefix, q_ids + a_ids, frames=frames, fps=2.0, mel=mel)
    labels = torch.full_like(input_ids, -100)
    labels[0, -len(a_ids):] = torch.tensor(a_ids)
    ref = peft_model(input_ids=input_ids, labels=labels, **kw).loss
    assert abs(got.item() - ref.item()) <= 1e-5


class KeepOneEarlyToken(MemoryPolicy):
    """Keeps all text and exactly one audio/visual token: the first one of the stream."""

    def update(self, ctx):
        media = (ctx.cand.modality != int(Modality.TEXT)).nonzero().squeeze(1)
        drop = media[1:]
        keep = torch.ones(ctx.cand.n, dtype=torch.bool)
        keep[drop] = False
        return ctx.cand.take(keep.nonzero().squeeze(1))


def test_gradient_reaches_a_group_one_token_through_memory(lora_omni):
    """The answer loss depends on media only through one retained token from group 1: its input
    embedding and the LoRA weights that built its keys/values in group 1 get gradients."""
    peft_model, ad = lora_omni
    frames, mel = _media(seed=2)
    prefix, q_ids = split_chat_prompt(ad.tokenizer, "s", "q")
    a_ids = ad.tokenizer("A. red", add_special_tokens=False)["input_ids"]
    pieces = _stream(ad, frames, mel, prefix)
    first_media = next(i for i, p in enumerate(pieces) if bool((p.modality != Modality.TEXT).any()))
    leaf = pieces[first_media].embeds.clone().requires_grad_(True)
    pieces[first_media].embeds = leaf
    loss, state = _loss(ad, KeepOneEarlyToken(), pieces, q_ids, a_ids, group_size=len(pieces[0]) + 4,
                        checkpoint=True)
    assert all(m.count(Modality.VISUAL) + m.count(Modality.AUDIO) == 1 for m in state.layers)
    assert state.groups > 3  # the retained token really is from long ago
    loss.backward()
    kept = int(state.layers[0].index[state.layers[0].modality != Modality.TEXT][0]) - sum(
        len(p) for p in pieces[:first_media])
    assert leaf.grad[kept].abs().sum() > 0  # the group-1 token's input
    others = torch.ones(leaf.shape[0], dtype=torch.bool)
    others[kept] = False
    assert leaf.grad[others].abs().sum() == 0  # evicted tokens contribute nothing... except
    # through the layers they fed *before* eviction: none here, since layer 0 evicts them at once
    # and later layers see only layer 0's output of the kept positions.
    lora_k = [p for n, p in peft_model.named_parameters() if "layers.0.self_attn.k_proj.lora_A" in n][0]
    assert lora_k.grad is not None and lora_k.grad.abs().sum() > 0


@pytest.mark.parametrize("scorer", ["omnimem", "random", "h2o"])
def test_group_checkpointing_gives_the_same_loss_and_gradients(lora_omni, scorer):
    peft_model, ad = lora_omni
    frames, mel = _media(seed=3)
    prefix, q_ids = split_chat_prompt(ad.tokenizer, "s", "q")
    a_ids = ad.tokenizer("A. red", add_special_tokens=False)["input_ids"]
    pieces = _stream(ad, frames, mel, prefix)
    results = []
    for checkpoint in (False, True):
        policy = make_policy(scorer, len(ad.decoder_layers), budget=30)
        peft_model.zero_grad()
        loss, _ = _loss(ad, policy, pieces, q_ids, a_ids, group_size=25, checkpoint=checkpoint)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.grad is not None}
        results.append((loss.item(), grads))
    (l0, g0), (l1, g1) = results
    assert abs(l0 - l1) < 1e-6 and g0.keys() == g1.keys() and len(g0) > 0
    for n in g0:
        assert torch.allclose(g0[n], g1[n], atol=1e-6), n


@pytest.mark.parametrize("answer_format", ["option", "cloze", "completion"])
def test_training_prompt_follows_the_answer_format(answer_format):
    """The objective trains on the prompt inference scores: with cloze, the question alone; with
    completion, the question's stem with no chat template."""
    from omnimem_train.config.schema import MediaConfig
    from omnimem_train.models.prompt import format_question
    from omnimem_train.train.objective import Example, StreamingObjective

    model, tok = build_tiny_model("tiny-omni", seed=1)
    ad = Qwen2_5OmniAdapter(model, tok)
    objective = StreamingObjective(model, ad, StreamingEngine(ad, make_policy("full", 4)), MediaConfig(),
                                   "s", answer_format=answer_format)
    ex = Example(video=None, audio=None, question="Which colour?", options=["red", "blue"], answer="blue")
    prefix, q_ids, a_ids = objective._prompt(ex)
    text = tok.decode(q_ids)
    assert ("A. red" in text) == (answer_format == "option")
    assert ("Which colour?" if answer_format != "completion" else "Which colour") in text
    assert (prefix, q_ids) == split_chat_prompt(
        tok, "s", format_question("Which colour?", ["red", "blue"], answer_format), answer_format)
    assert ("<|im_start|>" in tok.decode(prefix + q_ids)) == (answer_format != "completion")
    assert a_ids == tok("blue", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
