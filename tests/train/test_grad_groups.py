"""`memory_grad_groups`: gradients through the retained memory reach only a stream's last k groups.

`all` is the exact path; k covering the whole stream gives the exact loss and gradients; a shorter
window gives exactly the gradients of a run whose older groups never saw autograd, and a weight that
only touches those older groups gets none. Activation memory kept for backward does not grow with
the stream's length under a window, and does without one.
"""

import dataclasses

import pytest
import torch

from omnimem_train.config import load_config
from omnimem_train.config.schema import Config
from omnimem_train.errors import ConfigError
from omnimem_train.memory.layer_memory import LayerMemory
from omnimem_train.memory.registry import make_policy
from omnimem_train.models.builtin import build_tiny_model
from omnimem_train.models.prompt import split_chat_prompt
from omnimem_train.models.qwen2_5_omni import Qwen2_5OmniAdapter
from omnimem_train.streaming.answer import answer_loss
from omnimem_train.streaming.engine import StreamingEngine, detached_memory
from omnimem_train.streaming.grouping import iter_groups
from omnimem_train.train.lora import prepare_model
from tests.memory.streams import random_media
from tests.train.test_objective import _stream

GROUP = 25
BUDGET = 30
RECIPE = "recipes/train/tiny_cpu.yaml"


@pytest.fixture(scope="module")
def lora_omni():
    model, tok = build_tiny_model("tiny-omni", seed=1)
    peft_model = prepare_model(model, Config(lora_rank=4, lora_dropout=0.0))
    # LoRA B starts at zero; give it values so LoRA A receives gradients too.
    torch.manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return peft_model, Qwen2_5OmniAdapter(model, tok)


def _sample(ad, seconds, seed=3):
    frames, mel = random_media(seconds, seed=seed)
    prefix, q_ids = split_chat_prompt(ad.tokenizer, "s", "q")
    a_ids = ad.tokenizer("A. red", add_special_tokens=False)["input_ids"]
    return _stream(ad, frames, mel, prefix), q_ids, a_ids


def _engine(ad, scorer):
    torch.manual_seed(7)  # the random scorer draws from torch's RNG: every run draws the same
    return StreamingEngine(ad, make_policy(scorer, len(ad.decoder_layers), budget=BUDGET), group_size=GROUP)


def _run(peft_model, ad, pieces, q_ids, a_ids, scorer="omnimem", checkpoint=False, extra=None, **prefill_kw):
    """-> (loss, {name: grad}) of one streamed answer loss; `extra`: more leaves whose grads to report."""
    peft_model.zero_grad(set_to_none=True)
    engine = _engine(ad, scorer)
    state, _ = engine.prefill(iter(pieces), checkpoint=checkpoint, **prefill_kw)
    loss = answer_loss(engine, state, q_ids, a_ids)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.grad is not None}
    for name, leaf in (extra or {}).items():
        grads[name] = None if leaf.grad is None else leaf.grad.clone()
        leaf.grad = None
    return loss.detach(), grads, state


def _groups(pieces):
    return sum(1 for _ in iter_groups(iter(pieces), GROUP, None))


def test_without_a_window_prefill_is_the_exact_path_bit_for_bit(lora_omni):
    """grad_groups=None (`memory_grad_groups: all`) is the prefill without the argument."""
    peft_model, ad = lora_omni
    pieces, q_ids, a_ids = _sample(ad, 8.0)
    for checkpoint in (False, True):
        l0, g0, _ = _run(peft_model, ad, pieces, q_ids, a_ids, checkpoint=checkpoint)
        l1, g1, _ = _run(peft_model, ad, pieces, q_ids, a_ids, checkpoint=checkpoint, grad_groups=None)
        assert torch.equal(l0, l1) and g0.keys() == g1.keys() and len(g0) > 0
        assert all(torch.equal(g0[n], g1[n]) for n in g0)


@pytest.mark.parametrize("scorer", ["omnimem", "random", "h2o"])
@pytest.mark.parametrize("checkpoint", [False, True])
def test_a_window_covering_the_stream_gives_the_exact_loss_and_gradients(lora_omni, scorer, checkpoint):
    peft_model, ad = lora_omni
    pieces, q_ids, a_ids = _sample(ad, 4.0)
    n = _groups(pieces)
    assert n >= 4
    ref_loss, ref, ref_state = _run(peft_model, ad, pieces, q_ids, a_ids, scorer, checkpoint)
    for k in (n, n + 3):
        loss, got, state = _run(peft_model, ad, pieces, q_ids, a_ids, scorer, checkpoint, grad_groups=k)
        assert abs(loss.item() - ref_loss.item()) <= 1e-6
        assert got.keys() == ref.keys() and len(ref) > 0
        for name in ref:
            assert torch.allclose(got[name], ref[name], atol=1e-6, rtol=0), name
        assert [m.index.tolist() for m in state.layers] == [m.index.tolist() for m in ref_state.layers]


@pytest.mark.parametrize("scorer", ["omnimem", "random", "h2o"])
@pytest.mark.parametrize("checkpoint", [False, True])
def test_gradients_reach_only_the_last_k_groups(lora_omni, scorer, checkpoint):
    """With k=2 over a longer stream the gradients are those of a run whose older groups run without
    autograd (their contribution through memory removed), the loss and kept tokens are unchanged,
    and a scale on the first group's embeddings (a weight that only the oldest group reads) gets no
    gradient, while without the window it does."""
    peft_model, ad = lora_omni
    k = 2
    pieces, q_ids, a_ids = _sample(ad, 8.0)
    n = _groups(pieces)
    assert n >= 3 * k

    # Reference: the same groups by hand, the first n - k under no_grad.
    peft_model.zero_grad(set_to_none=True)
    engine = _engine(ad, scorer)
    state = engine.new_state()
    groups = list(iter_groups(iter(pieces), GROUP, None))
    with torch.no_grad():
        for g in groups[:-k]:
            engine.forward(state, g, evict=True)
    for g in groups[-k:]:
        engine.forward(state, g, evict=True, checkpoint=checkpoint)
    ref_loss = answer_loss(engine, state, q_ids, a_ids)
    ref_loss.backward()
    ref = {n_: p.grad.clone() for n_, p in peft_model.named_parameters() if p.grad is not None}

    # A scalar weight on the embeddings of the stream's first group only.
    scale = torch.ones((), requires_grad=True)
    assert len(pieces[0]) < GROUP  # the first piece lies inside group 1
    scaled = [dataclasses.replace(pieces[0], embeds=pieces[0].embeds * scale), *pieces[1:]]

    loss, got, _ = _run(peft_model, ad, scaled, q_ids, a_ids, scorer, checkpoint, {"scale": scale}, grad_groups=k)
    exact_loss, exact, _ = _run(peft_model, ad, scaled, q_ids, a_ids, scorer, checkpoint, {"scale": scale})

    assert abs(loss.item() - ref_loss.item()) <= 1e-6 and abs(loss.item() - exact_loss.item()) <= 1e-6
    assert got["scale"] is None or got["scale"].abs().item() == 0.0
    assert exact["scale"] is not None and exact["scale"].abs().item() > 0  # the weight does reach the loss
    lora = [name for name in ref if "lora_" in name]
    assert lora and set(lora) <= got.keys()
    for name in lora:
        assert torch.allclose(got[name], ref[name], atol=1e-6, rtol=0), name
    # ... and the window really cut something: the exact gradients differ.
    assert max((exact[name] - got[name]).abs().max().item() for name in lora) > 1e-5


def _saved_bytes(ad, seconds, grad_groups):
    """Bytes autograd saved for backward during the prefill (pack hook on every saved tensor: groups
    run without autograd save none), and how many layers' memory still carries a graph."""
    pieces, _, _ = _sample(ad, seconds)
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        engine = _engine(ad, "omnimem")
        state, _ = engine.prefill(iter(pieces), grad_groups=grad_groups)
        kept = sum(m.keys.grad_fn is not None for m in state.layers)
    return total[0], kept, _groups(pieces), state


def test_activation_memory_is_flat_in_the_stream_length_with_a_window(lora_omni):
    """Autograd saves tensors only for the last k groups with a window (the same for a 4x longer
    stream), for every group without one (growing with the stream)."""
    _, ad = lora_omni
    short, _, n_short, _ = _saved_bytes(ad, 4.0, 2)
    long, kept, n_long, state = _saved_bytes(ad, 16.0, 2)
    assert n_long >= 3 * n_short and kept == len(state.layers)  # gradients still reach the memory
    assert long <= 1.1 * short
    exact_short, _, _, _ = _saved_bytes(ad, 4.0, None)
    exact_long, _, _, _ = _saved_bytes(ad, 16.0, None)
    assert exact_long >= 2.5 * exact_short


def test_the_window_starts_from_detached_memory(lora_omni):
    """Memory carried in from an earlier prefill with autograd (keys/values and the policy's per-token
    state) is cut before the window's first group reads it, also when every group of this call is in
    the window; groups before the window read it as it is (they run without autograd)."""
    _, ad = lora_omni
    pieces, _, _ = _sample(ad, 4.0)
    for k in (1, 100):
        engine = _engine(ad, "h2o")
        state, _ = engine.prefill(iter(pieces[:3]))
        assert all(m.keys.grad_fn is not None and m.extras["acc_attn"].grad_fn is None for m in state.layers)
        state.layers = [dataclasses.replace(m, extras={"acc_attn": m.extras["acc_attn"].clone().requires_grad_()})
                        for m in state.layers]  # policy state with a graph too
        seen = []
        forward = engine.forward

        def spy(st, group, seen=seen, forward=forward, **kw):
            seen.append([t.requires_grad for m in st.layers for t in (m.keys, m.values, *m.extras.values())])
            return forward(st, group, **kw)

        engine.forward = spy
        engine.prefill(iter(pieces[3:]), state=state, grad_groups=k)
        assert len(seen) >= 2
        window_start = len(seen) - min(k, len(seen))
        assert not any(seen[window_start])  # the window's first group reads detached memory
        assert window_start == 0 or any(seen[0])  # a group before the window reads the memory as it was


def test_detached_memory_cuts_every_tensor():
    x = torch.ones(3, requires_grad=True)
    mem = LayerMemory(
        keys=(x * 2).view(1, 1, 3, 1), values=(x * 3).view(1, 1, 3, 1), positions=torch.zeros(3, 3, dtype=torch.long),
        modality=torch.zeros(3, dtype=torch.long), index=torch.arange(3), extras={"acc_attn": x * 4, "hidden": x[:, None] + 1},
    )
    cut = detached_memory(mem)
    assert not cut.keys.requires_grad and not cut.values.requires_grad
    assert not any(v.requires_grad for v in cut.extras.values()) and cut.extras.keys() == mem.extras.keys()
    assert torch.equal(cut.keys, mem.keys) and torch.equal(cut.extras["acc_attn"], mem.extras["acc_attn"])
    assert cut.keys.data_ptr() == mem.keys.data_ptr()  # no copy
    assert detached_memory(None) is None


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_prefill_rejects_a_bad_window(tiny_omni, bad):
    engine = StreamingEngine(tiny_omni, make_policy("full", len(tiny_omni.decoder_layers)), group_size=8)
    with pytest.raises(ValueError, match="grad_groups"):
        engine.prefill(iter([]), grad_groups=bad)


def test_config_key(tmp_path):
    assert load_config(RECIPE, []).memory_grad_groups == "all"
    assert load_config(RECIPE, ["memory_grad_groups=2"]).memory_grad_groups == 2
    assert load_config(RECIPE, ["memory_grad_groups=all"]).memory_grad_groups == "all"
    for bad in ("0", "-3", "some", "true", "1.5"):
        with pytest.raises(ConfigError, match="memory_grad_groups"):
            load_config(RECIPE, [f"memory_grad_groups={bad}"])
    with pytest.raises(ConfigError, match="memory_grad_groups.*compression"):
        load_config(RECIPE, ["memory_grad_groups=2", "compression=none"])


@pytest.mark.parametrize("value,expected", [("all", None), ("3", 3)])
def test_build_objective_passes_the_window_to_prefill(tmp_path, monkeypatch, value, expected):
    from data_prep.synthetic import write_clip
    from omnimem_train.train.objective import Example
    from omnimem_train.train.run import build_objective

    cfg = load_config(RECIPE, [f"output_dir={tmp_path}", "report_to=none", "device=cpu",
                               f"memory_grad_groups={value}"])
    objective, _ = build_objective(cfg)
    assert objective.grad_groups == expected
    calls = []
    prefill = objective.engine.prefill
    monkeypatch.setattr(objective.engine, "prefill", lambda *a, **kw: calls.append(kw) or prefill(*a, **kw))
    clip = write_clip(tmp_path / "c.mp4", 2, 56, 56, 8, seed=0)
    loss = objective([Example(video=str(clip), audio=None, question="q", options=["red", "blue"], answer="A. red")])
    assert torch.isfinite(loss) and calls and calls[0]["grad_groups"] == expected
