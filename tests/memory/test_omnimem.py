"""The OmniMem score against a plain per-token reference; running average; λ = 0 skips attention."""

import math

import pytest
import torch

import omnimem_train.memory.scorers.omnimem as omnimem_mod
from omnimem_train.memory.context import LayerContext
from omnimem_train.memory.layer_memory import LayerMemory
from omnimem_train.memory.registry import make_policy
from omnimem_train.memory.scorers.omnimem import OmniMemScorer
from omnimem_train.models.base import Modality
from omnimem_train.streaming.engine import StreamingEngine
from tests.memory.streams import omni_pieces, text_pieces


def _case(n_old=5, n_new=4, heads=4, kv_heads=2, d=8, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = n_old + n_new
    hidden = torch.randn(n, dim, generator=g)
    keys = torch.randn(1, kv_heads, n, d, generator=g)
    queries = torch.randn(heads, n_new, d, generator=g)
    prev_attn = torch.rand(n, generator=g) + 0.5  # new tokens' placeholder must be ignored
    cand = LayerMemory(keys, keys.clone(), torch.zeros(3, n, dtype=torch.long),
                       torch.full((n,), int(Modality.VISUAL)), torch.arange(n),
                       {"hidden": hidden, "attn": prev_attn.clone()})
    ctx = LayerContext(0, cand, n_new, {}, hidden[n_old:], lambda: queries)
    return ctx, hidden, keys, queries, prev_attn


def _reference(hidden, keys, queries, prev_attn, n_old, lam):
    """Written out per token with explicit loops, straight from METHOD.md §3."""
    n, heads, n_new, d = hidden.shape[0], queries.shape[0], queries.shape[1], queries.shape[2]
    rep = heads // keys.shape[1]

    def cos(a, b):
        return float(torch.dot(a, b) / (a.norm() * b.norm()))

    scores, mass = [], [0.0] * n
    for j in range(n_new):  # each query of the group
        visible = n_old + j + 1
        logits = []
        for i in range(visible):
            per_head = [float(torch.dot(queries[h, j], keys[0, h // rep, i])) / math.sqrt(d) for h in range(heads)]
            logits.append(sum(per_head) / heads)
        z = sum(math.exp(x) for x in logits)
        for i in range(visible):
            mass[i] += math.exp(logits[i]) / z
    for i in range(n):
        prev_c = cos(hidden[i], hidden[i - 1]) if i > 0 else 1.0
        next_c = cos(hidden[i], hidden[i + 1]) if i < n - 1 else 1.0
        s = prev_c + next_c
        a = (mass[i] + float(prev_attn[i])) / 2 if i < n_old else mass[i]
        scores.append(math.sqrt(max(0.0, 1 - s / 2)) * a**lam)
    return torch.tensor(scores), mass


@pytest.mark.parametrize("lam", [0.02, 0.5, 1.0])
def test_omnimem_score_equals_brute_force_reference(lam):
    ctx, hidden, keys, queries, prev = _case()
    got = OmniMemScorer(lam=lam, query_block=3).score(ctx)  # block 3 < group 4: blocks are exercised
    ref, mass = _reference(hidden, keys, queries, prev, ctx.n_old, lam)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-6)
    # The running average is applied to old memory only: new tokens carry their fresh mass.
    attn = ctx.cand.extras["attn"]
    n_old = ctx.n_old
    assert torch.allclose(attn[:n_old], (torch.tensor(mass[:n_old]) + prev[:n_old]) / 2, atol=1e-6)
    assert torch.allclose(attn[n_old:], torch.tensor(mass[n_old:]), atol=1e-6)


def test_lambda_zero_computes_no_attention(tiny_omni, monkeypatch):
    calls = {"mass": 0, "queries": 0}
    real_mass, real_queries = omnimem_mod.attention_mass, type(tiny_omni).group_queries

    def counting_mass(*a, **k):
        calls["mass"] += 1
        return real_mass(*a, **k)

    def counting_queries(self, *a, **k):
        calls["queries"] += 1
        return real_queries(self, *a, **k)

    monkeypatch.setattr(omnimem_mod, "attention_mass", counting_mass)
    monkeypatch.setattr(type(tiny_omni), "group_queries", counting_queries)
    pieces = omni_pieces(tiny_omni)
    n_layers = len(tiny_omni.decoder_layers)
    for method, extra in [("novelty", {}), ("omnimem", {"lam": 0.0})]:
        policy = make_policy(method, n_layers, budget=60, **extra)
        with torch.no_grad():
            state, _ = StreamingEngine(tiny_omni, policy, group_size=32).prefill(iter(pieces))
        assert calls == {"mass": 0, "queries": 0}, method
        assert "attn" not in state.layers[0].extras  # nothing attention-related is even stored
    with torch.no_grad():
        StreamingEngine(tiny_omni, make_policy("omnimem", n_layers, budget=60), group_size=32).prefill(iter(pieces))
    assert calls["mass"] > 0 and calls["queries"] == calls["mass"]


def test_memory_report_counts_what_omnimem_stores(tiny_llama):
    pieces = text_pieces(tiny_llama)
    with torch.no_grad():
        state, _ = StreamingEngine(tiny_llama, make_policy("omnimem", 4, budget=20), group_size=16).prefill(iter(pieces))
    rep = state.report()
    d_model = tiny_llama.model.config.hidden_size
    for layer, mem in zip(rep.layers, state.layers):
        n = mem.n
        assert layer.extra_bytes == n * d_model * 4 + n * 4  # hidden state + running attention (fp32)
        assert layer.kv_bytes == mem.kv_bytes()
        assert layer.meta_bytes == n * (1 + 1 + 1) * 8  # 1-D positions, modality, stream index (int64)
    assert rep.total_bytes == rep.kv_bytes + sum(layer.extra_bytes + layer.meta_bytes for layer in rep.layers)
