"""Budgets: uniform split by rho, ratio, per-layer files (and their one-line errors), selection."""

import json

import pytest
import torch

from omnimem_train.config.schema import MemoryConfig
from omnimem_train.errors import ConfigError
from omnimem_train.memory.budgets import Budgets, Limits, budgets_from_config, read_budget_file
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
    assert str(f) in msg and needle in msg and "\n" not in msg
    with pytest.raises(ConfigError):
        read_budget_file(tmp_path / "missing.json", 2)


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


def test_select_keeps_text_top_k_per_modality_in_order():
    scores = torch.tensor([9.0, 1.0, 5.0, 3.0, 0.0, 8.0, 7.0])
    modality = torch.tensor([T, V, V, A, T, A, V])
    assert select(scores, modality, Limits(audio=1, visual=2)).tolist() == [0, 2, 4, 5, 6]
    assert select(scores, modality, Limits(pooled=2)).tolist() == [0, 4, 5, 6]
    assert select(scores, modality, Limits(audio=0, visual=0)).tolist() == [0, 4]
    assert select(scores, modality, Limits(audio=5, visual=5)) is None  # bigger than what exists: no-op
    assert select(scores, modality, Limits()) is None
