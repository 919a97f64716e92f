"""OmniMem's stored hidden states as a sketch (`memory.sketch_dim`: one fixed random orthonormal
projection for every layer, group and stream; `memory.sketch_dtype`: unit vectors in a smaller
dtype): the selection stays close to the full-precision one and the per-token state shrinks by the
expected factor."""

import pytest
import torch

import omnimem_train.memory.scorers.omnimem as omnimem_mod
from omnimem_train.config import load_config
from omnimem_train.errors import ConfigError
from omnimem_train.memory.layer_memory import TokenShape
from omnimem_train.memory.registry import make_policy
from omnimem_train.memory.scorers.omnimem import OmniMemScorer, perturbation, sketch_matrix
from omnimem_train.models.base import Modality
from omnimem_train.streaming.engine import StreamingEngine
from tests.memory.streams import omni_pieces

GROUP = 32
D = 64  # tiny-omni's hidden size


@pytest.fixture(scope="module")
def pieces(tiny_omni):
    return omni_pieces(tiny_omni)  # 6 s: 246 audio/visual tokens, 8 groups of 32


def _kept(adapter, pieces, scorer, budget, **memory):
    policy = make_policy(scorer, len(adapter.decoder_layers), budget=budget, **memory)
    engine = StreamingEngine(adapter, policy, group_size=GROUP)
    with torch.no_grad():
        state, _ = engine.prefill(engine.start_stream(iter(pieces)))
    return state


def overlap(state, base) -> float:
    """Mean over layers of the fraction of `base`'s kept stream tokens (text included) also kept in `state`."""
    shares = [len(set(a.index.tolist()) & set(b.index.tolist())) / b.n for a, b in zip(state.layers, base.layers)]
    return sum(shares) / len(shares)


def test_the_sketch_matrix_is_fixed_and_orthonormal():
    m = sketch_matrix(D, 16)
    assert m.shape == (D, 16) and m.dtype == torch.float32
    assert torch.allclose(m.T @ m, torch.eye(16), atol=1e-5)
    sketch_matrix.cache_clear()
    assert torch.equal(sketch_matrix(D, 16), m)  # drawn again from the same seed: the same matrix


def test_every_layer_and_group_stores_the_same_sketch_of_a_hidden_state():
    """Tokens of different groups (calls) and layers (scorer instances) are compared by cosine, so a
    hidden state must map to the same sketch wherever it is stored."""
    hidden = torch.randn(10, D, generator=torch.Generator().manual_seed(0))
    a, b = OmniMemScorer(sketch_dim=16), OmniMemScorer(sketch_dim=16, lam=0.0)
    first = a.new_token_extras(hidden)["hidden"]
    want = torch.nn.functional.normalize(hidden @ sketch_matrix(D, 16), dim=-1)
    assert first.shape == (10, 16) and torch.allclose(first, want, atol=1e-6)
    assert torch.equal(a.new_token_extras(hidden[4:])["hidden"], first[4:])  # a later group
    assert torch.equal(b.new_token_extras(hidden)["hidden"], first)  # another layer
    assert OmniMemScorer().new_token_extras(hidden)["hidden"] is not None  # default: stored as it is
    assert torch.equal(OmniMemScorer().new_token_extras(hidden)["hidden"], hidden)


def _one_projection(sketched, base, dim, layers=None) -> bool:
    """Whether every retained token's stored sketch (tokens of every group) is the one fixed
    projection of its full-precision hidden state (`base`: the same stream without a sketch;
    compared on the tokens both kept). `layers`: how many layers to check, from the first; past the
    first layer the hidden states are equal only while the two runs kept the same memories."""
    m = sketch_matrix(D, dim)
    for a, b in list(zip(sketched.layers, base.layers))[:layers]:
        both = sorted(set(a.index.tolist()) & set(b.index.tolist()))
        mine, full = (mem.extras["hidden"][[mem.index.tolist().index(i) for i in both]] for mem in (a, b))
        if not torch.allclose(mine, torch.nn.functional.normalize(full @ m, dim=-1), atol=1e-5):
            return False
    return True


def test_a_rotation_keeps_the_selection_and_a_projection_per_group_would_not(tiny_omni, pieces, monkeypatch):
    """sketch_dim = hidden size is a rotation: cosines, hence the kept set, are the full-precision
    ones, and every stored sketch is that one rotation of its hidden state. Were each group (or
    layer) projected by its own matrix, neighbours from different groups would be compared in
    different spaces: the stored sketches are no longer one projection and the kept set changes."""
    for scorer in ("novelty", "omnimem"):
        base = _kept(tiny_omni, pieces, scorer, 60)
        sketched = _kept(tiny_omni, pieces, scorer, 60, sketch_dim=D)
        assert overlap(sketched, base) == 1.0 and _one_projection(sketched, base, D), scorer
    draws = iter(range(1, 10**6))
    monkeypatch.setattr(omnimem_mod, "_sketch_on", lambda d, k, device: sketch_matrix(d, k, seed=next(draws)))
    base = _kept(tiny_omni, pieces, "novelty", 60)
    per_group = _kept(tiny_omni, pieces, "novelty", 60, sketch_dim=D)
    assert overlap(per_group, base) < 0.99 and not _one_projection(per_group, base, D)  # measured 0.93


@pytest.mark.parametrize("scorer", ["novelty", "omnimem"])
def test_a_smaller_sketch_keeps_most_of_the_selection_and_shrinks_the_state(tiny_omni, pieces, scorer):
    """sketch_dim 48 of 64 on the tiny stream at a budget of 120 per layer: >= 95% of the kept set
    (measured 0.98); the stored hidden state shrinks by 48/64 (omnimem also stores its fp32 running
    attention, unchanged)."""
    base = _kept(tiny_omni, pieces, scorer, 120)
    sketched = _kept(tiny_omni, pieces, scorer, 120, sketch_dim=48)
    assert overlap(sketched, base) >= 0.95 and _one_projection(sketched, base, 48, layers=1)
    attn = 4 if scorer == "omnimem" else 0
    for full, small, mem in zip(base.report().layers, sketched.report().layers, sketched.layers):
        n = full.text + full.visual + full.audio
        assert (small.text + small.visual + small.audio) == n  # the same number of tokens kept
        assert full.extra_bytes == n * (D * 4 + attn) and small.extra_bytes == n * (48 * 4 + attn)
        assert mem.extras["hidden"].shape == (n, 48)


@pytest.mark.parametrize("dtype,size", [("float16", 2), ("bfloat16", 2)])
def test_reduced_precision_storage(tiny_omni, pieces, dtype, size):
    """Unit hidden states in 16 bits (the tiny model computes in float32): half the bytes, the
    selection kept (measured: float16 1.0, bfloat16 >= 0.97 on this stream)."""
    base = _kept(tiny_omni, pieces, "novelty", 60)
    small = _kept(tiny_omni, pieces, "novelty", 60, sketch_dtype=dtype)
    assert overlap(small, base) >= 0.95
    for full, half in zip(base.report().layers, small.report().layers):
        assert half.extra_bytes * 4 == full.extra_bytes * size
    assert small.layers[0].extras["hidden"].dtype == getattr(torch, dtype)


def test_the_declared_per_token_bytes_shrink_with_the_sketch(tiny_omni):
    """What budget_axis: bytes converts with: OmniMem's state per token is its sketch plus the
    running attention, so at equal bytes a sketched OmniMem keeps more tokens."""
    shape = TokenShape.of_adapter(tiny_omni)
    n_layers = len(tiny_omni.decoder_layers)
    full = make_policy("omnimem", n_layers, budget=60).token_bytes(shape)
    sketched = make_policy("omnimem", n_layers, budget=60, sketch_dim=16, sketch_dtype="float16").token_bytes(shape)
    assert (full.extra, sketched.extra) == (D * 4 + 4, 16 * 2 + 4)
    assert full.kv == sketched.kv and full.meta == sketched.meta
    counts = {Modality.AUDIO: 100, Modality.VISUAL: 100}
    kept = []
    for memory in ({}, {"sketch_dim": 16, "sketch_dtype": "float16"}):
        policy = make_policy("omnimem", n_layers, budget=60, **memory)
        policy.at_equal_bytes(shape)
        policy.expect(counts)
        kept.append(policy.budgets.mean_total())
    assert kept[0] < kept[1] <= 60


def test_the_sketch_score_is_the_score_of_the_sketches():
    hidden = torch.randn(12, D, generator=torch.Generator().manual_seed(1))
    stored = OmniMemScorer(sketch_dim=32).new_token_extras(hidden)["hidden"]
    assert torch.allclose(perturbation(stored), perturbation(hidden @ sketch_matrix(D, 32)), atol=1e-5)


def test_a_sketch_above_the_hidden_size_is_refused(tiny_omni, pieces):
    with pytest.raises(ConfigError, match="memory.sketch_dim: 65 is above the model's hidden size 64"):
        _kept(tiny_omni, pieces, "novelty", 60, sketch_dim=65)


@pytest.mark.parametrize("override,key", [("memory.sketch_dim=0", "memory.sketch_dim"),
                                          ("memory.sketch_dtype=float8", "memory.sketch_dtype"),
                                          ("memory.sketch_dim=abc", "memory.sketch_dim")])
def test_bad_sketch_settings_fail_at_start_up_in_one_line(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert key in str(info.value) and "\n" not in str(info.value)
