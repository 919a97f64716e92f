"""Budgets: uniform split by rho, ratio, per-layer files (and their one-line errors), the relative
budget (budget_fraction) and per-layer profiles scaled to equal memory, selection; layer totals
without a split (the release's budget-file form) as budgets both modalities share."""

import json
from pathlib import Path

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
    split_by_rho,
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


# --- layer totals without a split (the release's budget-file form) --------------------------------

MODELS = Path(__file__).resolve().parents[2] / "recipes" / "models"


def _decoder_layers(recipe: str) -> int:
    cfg = json.loads((MODELS / recipe).read_text())
    return cfg.get("text_config", cfg)["num_hidden_layers"]


def test_a_release_budget_file_of_layer_totals_is_read_as_shared_budgets(tmp_path):
    """36 ints for the 36-layer Qwen3-VL-8B config: each is one budget audio and visual share."""
    n = _decoder_layers("omnimem-qwen3vl-8b.json")
    assert n == 36
    totals = [900 if i < 7 or i == n - 1 else 300 for i in range(n)]  # high early and in the last layer
    f = tmp_path / "release.json"
    f.write_text(json.dumps(totals))
    assert read_budget_file(f, n) == tuple(totals)
    b = budgets_from_config(MemoryConfig(scorer="omnimem", budget_file=str(f), rho=5.0), n)
    for i, t in enumerate(totals):
        lim = b.limits(i, {})
        assert lim.pooled == t and (lim.audio, lim.visual) == split_by_rho(t, 5.0)  # its split sums to it
    assert b.mean_total() == sum(totals) / n
    blind = budgets_from_config(MemoryConfig(scorer="omnimem", budget_file=str(f), modality_aware=False), n)
    assert blind.limits(0, {}) == Limits(pooled=900)
    with pytest.raises(ConfigError, match=f"has 36 layers, the model has {_decoder_layers('vsalmonn2plus-7b.json')}"):
        read_budget_file(f, _decoder_layers("vsalmonn2plus-7b.json"))


def test_a_shared_layer_budget_lets_either_modality_take_all_of_it():
    """A layer total is no split: when audio scores best, the layer may hold only audio, up to the total
    (its ρ split alone would keep at most 1 audio token)."""
    b = Budgets.of_layers([[1, 5], 6], rho=5.0)
    scores = torch.tensor([9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    modality = torch.tensor([A, A, A, A, A, A, V, V, T])
    assert select(scores, modality, b.limits(1, {})).tolist() == [0, 1, 2, 3, 4, 5, 8]  # 6 audio, no visual
    assert select(scores, modality, b.limits(0, {})).tolist() == [0, 6, 7, 8]  # the pair: 1 audio, 2 visual


def test_a_28_layer_file_mixes_pairs_and_totals(tmp_path):
    n = _decoder_layers("vsalmonn2plus-7b.json")
    assert n == 28
    layers = [[40, 200] if i % 2 else 240 for i in range(n)]
    f = tmp_path / "mixed.json"
    f.write_text(json.dumps({"layers": layers}))
    got = read_budget_file(f, n)
    assert got == tuple(tuple(e) if isinstance(e, list) else e for e in layers)
    b = budgets_from_config(MemoryConfig(scorer="omnimem", budget_file=str(f)), n)
    assert b.limits(1, {}) == Limits(40, 200) and b.limits(0, {}).pooled == 240
    assert b.shared_layers == frozenset(range(0, n, 2))
    with pytest.raises(ConfigError, match="has 28 layers, the model has 36"):
        read_budget_file(f, 36)


@pytest.mark.parametrize("entry", [[1, 2, 3], 1.5, True, [], "12", None])
def test_a_layer_entry_is_a_pair_or_one_integer(tmp_path, entry):
    f = tmp_path / "b.json"
    f.write_text(json.dumps([10, entry]))
    with pytest.raises(ConfigError) as e:
        read_budget_file(f, 2)
    assert "layer 1: expected [audio, visual] integers or one integer" in str(e.value)
    f.write_text(json.dumps([10, -3]))
    with pytest.raises(ConfigError, match="layer 1: negative budget -3"):
        read_budget_file(f, 2)


def test_layer_totals_scale_as_a_profile_at_equal_memory(tmp_path):
    """With budget or budget_fraction a file of totals is a profile: each total keeps its form (a shared
    budget), the layers keep their ratio and the sum is the uniform cell's."""
    assert scale_profile((124, (4, 20), 62, 38), 4 * 31) == (62, (2, 10), 31, 19)  # halved, forms kept
    f = tmp_path / "totals.json"
    f.write_text(json.dumps([600, 120, 300, 100]))
    counts = {Modality.AUDIO: 100, Modality.VISUAL: 400}  # 1/16 -> 31 per layer
    cal = budgets_from_config(MemoryConfig(scorer="omnimem", budget_fraction=0.0625, budget_file=str(f)), 4)
    concrete = cal.for_stream(counts)
    assert concrete.shared_layers == frozenset(range(4)) and concrete.mean_total() == 31
    # 124 x (600, 120, 300, 100) / 1120 = 66.4, 13.3, 33.2, 11.1: the one leftover token to the largest remainder
    assert [concrete.limits(i, {}).pooled for i in range(4)] == [67, 13, 33, 11]


def test_frame_drop_under_layer_totals_caps_each_modality_by_the_tightest_split():
    """Frame dropping caps modalities before the LLM: a shared layer's cap is its ρ split, so the kept
    steps fit every layer's total."""
    from omnimem_train.memory.policies.frame_drop import FrameDropPolicy

    caps = FrameDropPolicy(Budgets.of_layers([60, [20, 100]], rho=5.0))._caps()
    assert caps == {Modality.AUDIO: 10, Modality.VISUAL: 50}
