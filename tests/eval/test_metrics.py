"""Pure metric functions, grid construction and the EvalConfig section."""

import dataclasses
import json
from pathlib import Path

import pytest

from omnimem_train.config import load_config
from omnimem_train.config.schema import Config, EvalConfig, FieldValueError
from omnimem_train.errors import ConfigError
from omnimem_train.eval.grid import Cell, cell_config, format_table, grid_cells, select_samples
from omnimem_train.eval.metrics import accuracy, accuracy_with_ci, compute_metrics, per_type, wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [(0, 4, 0.0, 0.4899), (4, 4, 0.5101, 1.0), (5, 10, 0.2366, 0.7634), (81, 263, 0.2553, 0.3662)],
)
def test_wilson_interval_known_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert (lo, hi) == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo99, hi99 = wilson_interval(3, 10, z=2.576)
    lo95, hi95 = wilson_interval(3, 10)
    assert lo99 < lo95 < 0.3 < hi95 < hi99
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_accuracy_and_breakdown():
    preds = [
        {"correct": True, "question_type": "a", "retained_kv_bytes": 10, "retained_total_bytes": 20,
         "stream_seconds": 0.5, "seconds": 1.0},
        {"correct": False, "question_type": "a", "retained_kv_bytes": 30, "retained_total_bytes": 40,
         "stream_seconds": 0.5, "seconds": 1.0},
        {"correct": True, "question_type": "b", "retained_kv_bytes": 20, "retained_total_bytes": 30,
         "stream_seconds": 1.0, "seconds": 2.0},
    ]
    assert accuracy([p["correct"] for p in preds]) == pytest.approx(2 / 3)
    assert accuracy([]) == 0.0
    assert accuracy_with_ci([True, False])["ci"] == list(wilson_interval(1, 2))
    types = per_type(preds)
    assert list(types) == ["a", "b"] and types["a"]["accuracy"] == 0.5 and types["b"]["n"] == 1
    m = compute_metrics(preds)
    assert (m["n"], m["correct"], m["ci_level"]) == (3, 2, 0.95)
    assert m["kv_bytes_mean"] == 20 and m["kv_bytes_max"] == 30 and m["total_bytes_mean"] == 30
    assert m["samples_per_s"] == pytest.approx(3 / 4.0)
    json.dumps(m)  # JSON-ready


def test_grid_cells_names_and_order():
    ecfg = EvalConfig(scorers=["omnimem", "full", "recency"], budgets=[64, 64, 32], budget_fractions=[0.125],
                      allocations=["uniform", "blind"])
    names = [c.name for c in grid_cells(ecfg)]
    assert names[0] == "full" and names.count("full") == 1  # always in, never twice
    assert names[1:7] == ["omnimem-64-uniform", "omnimem-64-blind", "omnimem-32-uniform", "omnimem-32-blind",
                          "omnimem-f0.125-uniform", "omnimem-f0.125-blind"]
    assert len(names) == 1 + 2 * 3 * 2
    assert [c.name for c in grid_cells(EvalConfig(scorers=[]))] == ["full"]


def test_cell_config_sets_memory_and_narrows_eval():
    cfg = Config(memory=dataclasses.replace(Config().memory, budget_file="b.json", scorer="h2o"))
    c = cell_config(cfg, Cell("recency", budget=8, allocation="blind"))
    assert (c.memory.scorer, c.memory.budget, c.memory.budget_file, c.memory.modality_aware) == ("recency", 8, None,
                                                                                                 False)
    assert (c.eval.scorers, c.eval.budgets, c.eval.allocations) == (["recency"], [8], ["blind"])
    f = cell_config(cfg, Cell("full"))
    assert (f.memory.scorer, f.memory.budget, f.eval.scorers) == ("full", None, [])
    frac = cell_config(cfg, Cell("omnimem", budget_fraction=0.25, allocation="uniform"))
    assert frac.memory.budget is None and frac.eval.budget_fractions == [0.25] and frac.eval.budgets == []
    assert (frac.memory.budget_fraction, frac.memory.budget_file, frac.memory.modality_aware) == (0.25, None, True)
    cal = cell_config(cfg, Cell("omnimem", budget_fraction=0.25, allocation="calibrated"))
    assert (cal.memory.budget_fraction, cal.memory.modality_aware) == (0.25, True)
    assert cal.memory.budget_file == str(Path(cfg.output_dir) / "calibration" / "budget_profile.json")
    given = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, calibration_profile="tuned_with.json"))
    assert cell_config(given, Cell("omnimem", budget=8, allocation="calibrated")).memory.budget_file == "tuned_with.json"


def test_frame_drop_has_no_calibrated_cell():
    ecfg = EvalConfig(scorers=["frame_drop", "novelty"], budgets=[], budget_fractions=[0.0625],
                      allocations=["uniform", "calibrated", "blind"])
    names = [c.name for c in grid_cells(ecfg)]
    assert names == ["full", "frame_drop-f0.0625-uniform", "frame_drop-f0.0625-blind", "novelty-f0.0625-uniform",
                     "novelty-f0.0625-calibrated", "novelty-f0.0625-blind"]


def test_format_table_lines():
    row = {"scorer": "full", "budget": None, "budget_fraction": None, "allocation": None, "accuracy": 0.5,
           "ci": [0.1, 0.9], "n": 4, "kv_bytes_mean": 2**20, "total_bytes_mean": 3 * 2**20, "samples_per_s": 3.0}
    frac = dict(row, scorer="omnimem", budget_fraction=0.125, allocation="uniform")
    lines = format_table([row, frac]).splitlines()
    assert len(lines) == 4 and "0.500 [0.100, 0.900]" in lines[2] and "1.000" in lines[2] and "3.000" in lines[2]
    assert "0.125x" in lines[3] and "uniform" in lines[3]


def test_select_samples_fraction(tmp_path):
    from data_prep.tiny_qa import make_tiny_qa

    path = str(make_tiny_qa(tmp_path, num=4, seconds=1.0, size=16, split="val"))
    ids = [s.id for s in select_samples(EvalConfig(manifest=path, split="val"))]
    assert len(ids) == 4
    for fraction, n in [(0.5, 2), (0.3, 2), (0.25, 1), (0.01, 1), (0.75, 3)]:
        assert [s.id for s in select_samples(EvalConfig(manifest=path, split="val", fraction=fraction))] == ids[:n]
    with pytest.raises(ConfigError, match="no samples of split 'test'"):
        select_samples(EvalConfig(manifest=path, split="test"))


def test_eval_config_section():
    for f in dataclasses.fields(EvalConfig):
        assert f.metadata.get("help", "").strip(), f"EvalConfig.{f.name} has no help text"
    assert isinstance(Config().eval, EvalConfig)
    cfg = load_config(None, ["eval.budgets=[8,16]", "eval.budget_fractions=[0.125]", "eval.fraction=0.5"])
    assert cfg.eval.budgets == [8, 16] and cfg.eval.budget_fractions == [0.125] and cfg.eval.fraction == 0.5
    for kwargs, name in [({"fraction": 1.5}, "fraction"), ({"budgets": [0]}, "budgets"),
                         ({"budget_fractions": [0.0]}, "budget_fractions"), ({"allocations": ["both"]}, "allocations"),
                         ({"split": "dev"}, "split"), ({"budgets": [], "budget_fractions": []}, "budgets"),
                         ({"manifest": " "}, "manifest")]:
        with pytest.raises(FieldValueError) as info:
            EvalConfig(**kwargs)
        assert info.value.name == name
    assert EvalConfig(scorers=[], budgets=[], allocations=[]).scorers == []  # full memory only
    with pytest.raises(ConfigError, match="eval.budgets"):
        load_config(None, ["eval.budgets=[1.5]"])


def test_recipe_loads():
    cfg = load_config("recipes/eval/tiny_omni.yaml")
    assert cfg.model_name_or_path == "builtin:tiny-omni" and len(cfg.eval.scorers) == 2
    assert cfg.eval.manifest.endswith("tiny_qa/manifest.jsonl") and cfg.eval.split == "test"


def test_per_head_cells_are_named_apart_and_set_memory_per_head():
    ecfg = EvalConfig(scorers=["snapkv"], per_head_scorers=["snapkv"], budgets=[], budget_fractions=[0.0625],
                      allocations=["calibrated"])
    cells = grid_cells(ecfg)
    assert [c.name for c in cells] == ["full", "snapkv-f0.0625-calibrated", "snapkv.per_head-f0.0625-calibrated"]
    cfg = Config(eval=ecfg)
    shared, per_head = (cell_config(cfg, c) for c in cells[1:])
    assert (shared.memory.scorer, shared.memory.per_head) == ("snapkv", False)
    assert (per_head.memory.scorer, per_head.memory.per_head) == ("snapkv", True)
    assert (per_head.eval.scorers, per_head.eval.per_head_scorers) == ([], ["snapkv"])
    assert cells[2].identity()["scorer"] == "snapkv.per_head"  # tables and comparisons keep them apart


def test_frame_drop_in_a_calibrated_grid_gets_its_uniform_cell():
    # frame_drop has no per-layer memory to allocate: a grid of calibrated cells gives it the uniform one
    ecfg = EvalConfig(scorers=["omnimem", "frame_drop"], budgets=[], budget_fractions=[0.0625],
                      allocations=["calibrated"])
    assert [c.name for c in grid_cells(ecfg)] == ["full", "omnimem-f0.0625-calibrated", "frame_drop-f0.0625-uniform"]


def test_per_group_accuracy():
    from omnimem_train.eval.metrics import per_group

    preds = [{"correct": c, "question_type": "a", "groups": {"depth": d, "len": "64"}}
             for c, d in [(True, "last"), (False, "first"), (True, "first"), (True, "first")]]
    groups = per_group(preds)
    assert list(groups) == ["depth", "len"]
    assert list(groups["depth"]) == ["last", "first"]  # in order of first appearance
    assert groups["depth"]["first"]["correct"] == 2 and groups["depth"]["first"]["n"] == 3
    assert groups["depth"]["last"]["accuracy"] == 1.0 and groups["len"]["64"]["n"] == 4
    assert per_group([{"correct": True, "question_type": "a"}]) == {}
