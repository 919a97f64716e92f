"""Budgets: uniform split by rho, ratio, per-layer files (and their one-line errors), the relative
budget (budget_fraction) and per-layer profiles scaled to equal memory, selection."""

import json

import pytest
import torch

from omnimem_train.config.schema import MemoryConfig
from omnimem_train.errors import ConfigError
from omnimem_train.memory.budgets import (
    Budgets,
    Limits,
    budgets_from_config,
    fraction_budget,
    largest_remainder,
    read_budget_file,
    scale_profile,
)
from omnimem_train.memory.registry import build_policy, known_methods
from omnimem_train.memory.selection import select
from omnimem_train.models.base import Modality

A, V, T = int(Modality.AUDIO), int(Modality.VISUAL), int(Modality.TEXT)


def test_uniform_split_by_rho_and_blind_pooling():
    b = Budgets.uniform(60, 3, rho=5.0)
    assert b.limits(2, {}) == Limits(audio=10, visual=50)
    assert Budgets.uniform(60, 3, rho=5.0, modality_aware=False).limits(0, {}) == Limits(pooled=60)
    assert Budgets.uniform(0, 2, rho=5.0).limits(1, {}) == Limits(0, 0)


def test_compression_ratio_keeps_a_fraction_of_what_was_seen():
    b = Budgets.ratio(0.75)
    assert b.limits(0, {Modality.AUDIO: 40, Modality.VISUAL: 400}) == Limits(audio=10, visual=100)
    assert Budgets.ratio(0.75, False).limits(0, {Modality.AUDIO: 40, Modality.VISUAL: 400}) == Limits(pooled=110)


def test_budget_file_round_trip_and_config(tmp_path):
    f = tmp_path / "b.json"
    f.write_text(json.dumps([[1, 5], [0, 9]]))
    assert read_budget_file(f, 2) == ((1, 5), (0, 9))
    f.write_text(json.dumps({"layers": [[1, 5], [0, 9]], "total": 15}))
    b = budgets_from_config(MemoryConfig(scorer="omnimem", budget_file=str(f)), 2)
    assert b.limits(1, {}) == Limits(0, 9)
    blind = budgets_from_config(MemoryConfig(scorer="omnimem", budget_file=str(f), modality_aware=False), 2)
    assert blind.limits(0, {}) == Limits(pooled=6)


@pytest.mark.parametrize(
    "content,needle",
    [
        ([[1, 2]], "has 1 layers, the model has 2"),
        ([[1, 2], [-1, 3]], "layer 1: negative budget"),
        ([[1, 2], [1.5, 3]], "layer 1: expected [audio, visual] integers"),
        ({"oops": 1}, "expected a list"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_budget_files_are_one_line_errors(tmp_path, content, needle):
    f = tmp_path / "budget.json"
    f.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ConfigError) as e:
        read_budget_file(f, 2)
    msg = str(e.value)
    assert msg.startswith(f"{f}: memory.budget_file: ") and needle in msg and "\n" not in msg
    with pytest.raises(ConfigError):
        read_budget_file(tmp_path / "missing.json", 2)


def test_budget_file_errors_name_the_key_and_the_json_position(tmp_path):
    f = tmp_path / "budget.json"
    f.write_text('{"layers": [\n  [1, 2],\n  [3, x]\n]}\n')  # the x: line 3, column 7
    with pytest.raises(ConfigError) as e:
        read_budget_file(f, 2)
    assert str(e.value) == f"{f}: memory.budget_file: not valid JSON (line 3, column 7: Expecting value)"
    with pytest.raises(ConfigError) as e:
        read_budget_file(f, 2, key="eval.calibration_profile")
    assert str(e.value).startswith(f"{f}: eval.calibration_profile: not valid JSON")
    missing = tmp_path / "missing.json"
    with pytest.raises(ConfigError) as e:
        read_budget_file(missing, 2)
    assert str(e.value) == f"memory.budget_file: {missing}: budget file not found"
    f.write_text("[[1, 2], [3, 4], [5, 6]]")
    assert read_budget_file(f, None) == ((1, 2), (3, 4), (5, 6))  # no model yet: any layer count


def test_unknown_scorer_lists_known_names():
    with pytest.raises(ConfigError) as e:
        build_policy(MemoryConfig(scorer="h3o", budget=10), 2)
    msg = str(e.value)
    assert "h3o" in msg and all(name in msg for name in known_methods())
    assert {"omnimem", "novelty", "random", "recency", "key_norm", "value_norm", "h2o", "snapkv", "keydiff",
            "frame_drop", "full"} <= set(known_methods())


def test_config_rejects_two_budget_modes():
    with pytest.raises(ValueError, match="only one of"):
        MemoryConfig(budget=10, compression_ratio=0.5)
    with pytest.raises(ValueError, match="only one of"):
        MemoryConfig(budget_fraction=0.0625, budget=10)
    with pytest.raises(ValueError, match="budget_fraction"):
        MemoryConfig(budget_fraction=0.0)
    with pytest.raises(ValueError, match="budget_fraction"):
        MemoryConfig(budget_fraction=1.5)
    with pytest.raises(ValueError, match="no budget_file with compression_ratio"):
        MemoryConfig(budget_file="b.json", compression_ratio=0.5)
    MemoryConfig(budget_file="b.json", budget_fraction=0.0625)  # a profile at a relative size: fine


def test_fraction_budget_is_exact_and_rounds_half_up():
    counts = {Modality.AUDIO: 100, Modality.VISUAL: 400}
    assert fraction_budget(1 / 16, counts) == 31  # 31.25
    assert fraction_budget(0.125, counts) == 63  # 62.5: half up
    assert fraction_budget(1 / 256, counts) == 2  # 1.95
    assert fraction_budget(1e-6, counts) == 1  # a stream with media keeps at least one token
    assert fraction_budget(0.5, {}) == 0  # nothing to keep
    assert fraction_budget(1.0, counts) == 500
    assert fraction_budget(0.5, {Modality.AUDIO: 3, Modality.VISUAL: 0, Modality.TEXT: 1000}) == 2  # text never counts
    with pytest.raises(ValueError):
        fraction_budget(0.0, counts)


def test_largest_remainder_sums_exactly_and_keeps_order():
    assert largest_remainder([0.5, 0.5, 2.0], 3) == [1, 0, 2]
    assert largest_remainder([], 0) == []
    with pytest.raises(ValueError):
        largest_remainder([], 1)
    shares = [3.7, 0.2, 1.1, 5.0]
    out = largest_remainder(shares, 10)
    assert sum(out) == 10 and all(abs(o - s) < 1 for o, s in zip(out, shares))


@pytest.mark.parametrize("total", [0, 1, 7, 31, 124, 1000])
def test_scale_profile_sums_exactly_and_keeps_the_shape(total):
    profile = ((120, 600), (10, 200), (5, 90), (300, 900))  # 6.6x between layer totals, audio-heavy layers
    scaled = scale_profile(profile, total)
    assert sum(a + v for a, v in scaled) == total  # equal memory: exactly the uniform cell's total
    z = sum(a + v for a, v in profile)
    for (a, v), (pa, pv) in zip(scaled, profile):
        assert abs(a - total * pa / z) < 1 and abs(v - total * pv / z) < 1
    if total >= 1000:  # the shape survives: the largest layer stays the largest, audio shares stay apart
        assert max(range(4), key=lambda i: sum(scaled[i])) == 3
        assert scaled[0][0] / sum(scaled[0]) == pytest.approx(120 / 720, abs=0.01)


def test_budget_fraction_resolves_per_stream_uniform_and_profiled(tmp_path):
    counts = {Modality.AUDIO: 100, Modality.VISUAL: 400}  # 1/16 -> 31 per layer
    uni = budgets_from_config(MemoryConfig(scorer="omnimem", budget_fraction=0.0625, rho=5.0), 4)
    assert uni.needs_counts
    with pytest.raises(RuntimeError):
        uni.limits(0, {})  # unresolved: never silently unlimited
    concrete = uni.for_stream(counts)
    assert concrete.per_layer == ((5, 26),) * 4 and concrete.mean_total() == 31
    f = tmp_path / "profile.json"
    f.write_text(json.dumps({"layers": [[100, 500], [0, 50], [10, 90], [40, 210]]}))
    cal = budgets_from_config(MemoryConfig(scorer="omnimem", budget_fraction=0.0625, budget_file=str(f)), 4)
    layers = cal.for_stream(counts).per_layer
    assert sum(a + v for a, v in layers) == 4 * 31  # the same total as the uniform cell
    assert layers != concrete.per_layer and layers[0][0] > layers[1][0]  # the profile's shape, not uniform
    blind = budgets_from_config(MemoryConfig(scorer="omnimem", budget_fraction=0.0625, modality_aware=False), 4)
    assert blind.for_stream(counts).limits(3, {}) == Limits(pooled=31)
    sized = budgets_from_config(MemoryConfig(scorer="omnimem", budget=31, budget_file=str(f)), 4)
    assert sized.per_layer == layers  # an absolute size scales the profile the same way
    # a longer stream gets a proportionally larger fixed budget: the size is the stream's own fraction
    assert uni.for_stream({Modality.AUDIO: 200, Modality.VISUAL: 800}).mean_total() == 63  # 62.5, half up


def test_select_keeps_text_top_k_per_modality_in_order():
    scores = torch.tensor([9.0, 1.0, 5.0, 3.0, 0.0, 8.0, 7.0])
    modality = torch.tensor([T, V, V, A, T, A, V])
    assert select(scores, modality, Limits(audio=1, visual=2)).tolist() == [0, 2, 4, 5, 6]
    assert select(scores, modality, Limits(pooled=2)).tolist() == [0, 4, 5, 6]
    assert select(scores, modality, Limits(audio=0, visual=0)).tolist() == [0, 4]
    assert select(scores, modality, Limits(audio=5, visual=5)) is None  # bigger than what exists: no-op
    assert select(scores, modality, Limits()) is None
