"""Equal total bytes: per-token byte costs as the memory report counts them, and budgets sized so a
method that stores state per token (hidden states, running attention, per-head bookkeeping) holds
as many bytes as a method keeping K/V only at the nominal token budget."""

import pytest
import torch

from omnimem_train.errors import ConfigError
from omnimem_train.memory.budgets import Budgets, EqualBytes, stream_counts
from omnimem_train.memory.layer_memory import TokenShape
from omnimem_train.memory.registry import make_policy
from omnimem_train.models.base import Modality
from omnimem_train.streaming.engine import StreamingEngine
from tests.memory.streams import omni_pieces

GROUP = 32


@pytest.fixture(scope="module")
def pieces(tiny_omni):
    return omni_pieces(tiny_omni)


def _stream(adapter, policy, pieces):
    engine = StreamingEngine(adapter, policy, group_size=GROUP)
    with torch.no_grad():
        state, _ = engine.prefill(engine.start_stream(iter(pieces)))
    return state


def test_token_shape_reads_the_model(tiny_omni):
    shape = TokenShape.of_adapter(tiny_omni)
    cfg = tiny_omni.decoder_layers[0].self_attn.config
    assert shape.n_kv_heads == cfg.num_key_value_heads and shape.hidden_size == cfg.hidden_size
    assert shape.head_dim == tiny_omni.decoder_layers[0].self_attn.head_dim
    assert (shape.position_dims, shape.dtype) == (3, tiny_omni.dtype)


@pytest.mark.parametrize("scorer,per_head", [("value_norm", False), ("omnimem", False), ("novelty", False),
                                             ("h2o", True), ("recency", False)])
def test_per_token_costs_are_what_the_report_counts(tiny_omni, pieces, scorer, per_head):
    """A policy's declared bytes per retained token, times the tokens it retains, is the report's
    count, layer by layer (K/V, bookkeeping and the policy's state apart)."""
    policy = make_policy(scorer, len(tiny_omni.decoder_layers), budget=60, per_head=per_head)
    cost = policy.token_bytes(TokenShape.of_adapter(tiny_omni))
    state = _stream(tiny_omni, policy, pieces)
    for layer, mem in zip(state.report().layers, state.layers):
        assert (layer.kv_bytes, layer.meta_bytes, layer.extra_bytes) == (
            mem.n * cost.kv, mem.n * cost.meta, mem.n * cost.extra), scorer
    if scorer == "value_norm":
        assert cost.extra == 0
    shape = TokenShape.of_adapter(tiny_omni)
    assert cost.kv == shape.token_bytes().kv == 2 * shape.n_kv_heads * shape.head_dim * 4  # fp32 K and V


def test_equal_bytes_token_count():
    eb = EqualBytes(reference=100, method=200)
    assert eb.tokens(60, text=0) == 30
    assert eb.tokens(60, text=20) == 20  # (20 + 60) x 100 / 200 = 40 tokens, 20 of them text
    assert eb.tokens(10, text=20) == 0  # the text alone already costs more: no media at all
    assert EqualBytes(100, 100).tokens(60, text=20) == 60  # a KV-only method keeps its budget
    with pytest.raises(ValueError):
        EqualBytes(200, 100)


def test_budgets_at_equal_bytes_resolve_per_stream_with_the_allocation():
    eb = EqualBytes(reference=100, method=200)
    counts = stream_counts([])  # a StreamCounts: media counts and .text
    counts.update({Modality.AUDIO: 200, Modality.VISUAL: 800})
    counts.text = 20
    uniform = Budgets.sized(60, 4, rho=5.0).at_equal_bytes(eb)
    assert uniform.needs_counts
    with pytest.raises(RuntimeError, match="per stream"):
        uniform.limits(0, {})
    assert uniform.for_stream(counts).per_layer == ((3, 17),) * 4  # 20 tokens, split by rho
    profile = ((1, 9), (3, 27), (0, 0), (2, 18))
    calibrated = Budgets.sized(60, 4, rho=5.0, profile=profile).at_equal_bytes(eb).for_stream(counts)
    assert calibrated.per_layer == Budgets.sized(20, 4, rho=5.0, profile=profile).per_layer
    fraction = Budgets.of_fraction(0.0625, 4, rho=5.0).at_equal_bytes(eb)  # 62.5 -> 63, then equal bytes
    assert fraction.for_stream(counts).mean_total() == (20 + 63) * 100 // 200 - 20
    with pytest.raises(ValueError, match="budget"):
        Budgets.unlimited().at_equal_bytes(eb)


def test_stream_counts_stay_media_counts_and_carry_the_text(tiny_omni, pieces):
    counts = stream_counts(pieces)
    assert set(counts) == {Modality.AUDIO, Modality.VISUAL}
    assert counts.text == sum(int((p.modality == int(Modality.TEXT)).sum()) for p in pieces) > 0


def test_at_equal_bytes_omnimem_holds_the_bytes_of_value_norm(tiny_omni, pieces):
    """At equal tokens OmniMem holds about twice the bytes of value_norm on the tiny model (a hidden
    state of 64 floats per token beside K/V of 2 x 2 heads x 16); at equal bytes it keeps fewer
    tokens and its total is within a few % of value_norm's (at or below it)."""
    n_layers, shape = len(tiny_omni.decoder_layers), TokenShape.of_adapter(tiny_omni)
    totals = {}
    for axis in ("tokens", "bytes"):
        for scorer in ("value_norm", "omnimem", "h2o"):
            policy = make_policy(scorer, n_layers, budget=60)
            if axis == "bytes":
                policy.at_equal_bytes(shape)
            state = _stream(tiny_omni, policy, pieces)
            rep = state.report()
            totals[axis, scorer] = (rep.total_bytes, rep.mean("visual") + rep.mean("audio"))
    assert 1.7 < totals["tokens", "omnimem"][0] / totals["tokens", "value_norm"][0] < 2.2
    assert totals["bytes", "value_norm"] == totals["tokens", "value_norm"]  # KV only: nothing changes
    for scorer in ("omnimem", "h2o"):
        ratio = totals["bytes", scorer][0] / totals["bytes", "value_norm"][0]
        assert 0.97 <= ratio <= 1.0, (scorer, ratio)
        assert totals["bytes", scorer][1] < totals["tokens", scorer][1] == 60
    assert totals["bytes", "omnimem"][1] < totals["bytes", "h2o"][1]  # a hidden state costs more than a float


def test_equal_bytes_needs_a_token_budget():
    from omnimem_train.config.schema import MemoryConfig
    from omnimem_train.memory.registry import build_policy

    shape = TokenShape(2, 16, 64, 3, torch.float32)
    with pytest.raises(ConfigError, match="budget_axis"):
        build_policy(MemoryConfig(scorer="omnimem", compression_ratio=0.5), 4, equal_bytes=shape)
    assert build_policy(MemoryConfig(scorer="full"), 4, equal_bytes=shape).name == "full"


def test_report_line_gives_kv_extra_state_and_total(tiny_omni, pieces):
    state = _stream(tiny_omni, make_policy("omnimem", len(tiny_omni.decoder_layers), budget=60), pieces)
    line = state.report().line()
    assert "\n" not in line and "KV " in line and "extra state " in line and "= total " in line
