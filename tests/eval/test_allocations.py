"""The grid's allocation axis: the calibrated profile is measured on train-split clips only, every
allocation of one budget holds the same total (the profile scaled per sample, sum exact), a
calibrated cell runs through eval, and the summary carries the paired comparisons of the method."""

import contextlib
import io
import json
from pathlib import Path

import pytest

from data_prep.tiny_qa import make_tiny_qa
from omnimem_train.commands.cli import main
from omnimem_train.config import load_config
from omnimem_train.data.manifest import read_manifest
from omnimem_train.eval.calibration import calibration_inputs
from omnimem_train.memory.budgets import fraction_budget
from omnimem_train.memory.registry import build_policy
from omnimem_train.models.base import Modality

RECIPE = "recipes/eval/tiny_omni.yaml"
FRACTION = 0.25
GRID = ["eval.scorers=[omnimem,novelty]", "eval.budgets=[]", f"eval.budget_fractions=[{FRACTION}]",
        "eval.allocations=[uniform,calibrated,blind]", "eval.calibration_clips=2", "memory.group_size=32",
        "device=cpu"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """One manifest with 3 train clips and 3 test clips (different seeds), absolute media paths."""
    root = tmp_path_factory.mktemp("alloc")
    lines = []
    for split, seed in (("train", 1), ("test", 0)):
        part = make_tiny_qa(root / split, num=3, seconds=2.0, size=56, seed=seed, split=split)
        for line in part.read_text().splitlines():
            record = json.loads(line)
            record["video"] = str(part.parent / record["video"])
            lines.append(json.dumps(record))
    path = root / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _main(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_calibration_inputs_come_from_the_train_split_only(manifest):
    cfg = load_config(RECIPE, [f"eval.manifest={manifest}", "eval.split=test", "eval.calibration_clips=5"])
    inputs = calibration_inputs(cfg.eval)
    train = {s.video for s in read_manifest(manifest, "train")}
    test = {s.video for s in read_manifest(manifest, "test")}
    assert set(inputs) == train and not set(inputs) & test
    cfg = load_config(RECIPE, [f"eval.manifest={manifest}", "eval.split=train", "eval.calibration_clips=2"])
    assert len(calibration_inputs(cfg.eval)) == 2  # evaluating train: still calibrated on train, never on val/test


def test_calibrated_grid_at_equal_memory(manifest, tmp_path):
    out_dir = tmp_path / "run"
    code, out, err = _main(["eval", RECIPE, f"eval.manifest={manifest}", f"output_dir={out_dir}", *GRID])
    assert code == 0, err
    names = ["full", *(f"{s}-f{FRACTION:g}-{a}" for s in ("omnimem", "novelty")
                       for a in ("uniform", "calibrated", "blind"))]
    assert sorted(p.name for p in (out_dir / "cells").iterdir()) == sorted(names)

    # the profile: measured on the train clips, with its statistics, beside the results
    profile = out_dir / "calibration" / "budget_profile.json"
    settings = json.loads((out_dir / "calibration" / "settings.json").read_text())
    train = {s.video for s in read_manifest(manifest, "train")}
    assert settings["split"] == "train" and set(settings["inputs"]) <= train and len(settings["inputs"]) == 2
    saved = json.loads(profile.read_text())
    assert saved["inputs"] == settings["inputs"] and len(saved["stats"]) == 4 and "entropy" in saved["stats"][0]
    assert (out_dir / "calibration" / "budget_profile.png").is_file()

    # equal memory: every allocation of a sample has the same per-layer budget on average, the
    # uniform one is f x the sample's exact tokens, and the calibrated one sums exactly to it
    per_cell = {n: {r["id"]: r for r in _records(out_dir / "cells" / n / "predictions.jsonl")} for n in names[1:]}
    ids = list(per_cell[names[1]])
    cal_cfg = load_config(out_dir / "cells" / f"omnimem-f{FRACTION:g}-calibrated" / "config.yaml")
    uni_cfg = load_config(out_dir / "cells" / f"omnimem-f{FRACTION:g}-uniform" / "config.yaml")
    assert cal_cfg.memory.budget_file == str(profile) and uni_cfg.memory.budget_file is None
    assert (cal_cfg.memory.budget_fraction, uni_cfg.memory.budget_fraction) == (FRACTION, FRACTION)
    for sid in ids:
        budgets = {per_cell[n][sid]["budget"] for n in names[1:]}
        assert len(budgets) == 1, (sid, budgets)
    # ... and resolved by hand from the cell configs, for one stream size
    counts = {Modality.AUDIO: 50, Modality.VISUAL: 24}
    want = fraction_budget(FRACTION, counts)
    cal = build_policy(cal_cfg.memory, 4).template.for_stream(counts).per_layer
    uni = build_policy(uni_cfg.memory, 4).template.for_stream(counts).per_layer
    assert sum(a + v for a, v in cal) == sum(a + v for a, v in uni) == 4 * want
    assert cal != uni  # the calibrated profile shapes the allocation

    # the summary: OmniMem (calibrated + omnimem) against full memory and every other cell, and the 2x2
    summary = json.loads((out_dir / "summary.json").read_text())
    pairs = {(c["a"], c["b"]) for c in summary["comparisons"]}
    method = f"omnimem-f{FRACTION:g}-calibrated"
    assert ("full", method) in pairs
    assert {(method, n) for n in names[1:] if n != method} <= pairs
    assert (f"novelty-f{FRACTION:g}-calibrated", f"novelty-f{FRACTION:g}-uniform") in pairs
    assert (f"omnimem-f{FRACTION:g}-uniform", f"novelty-f{FRACTION:g}-uniform") in pairs
    for c in summary["comparisons"]:
        assert c["n"] == 3 and c["ci"][0] <= c["diff"] <= c["ci"][1]
    assert "Paired comparisons" in (out_dir / "summary.md").read_text()

    # a re-run reuses the profile and every cell
    before = (out_dir / "calibration" / "settings.json").stat().st_mtime_ns
    code, out, err = _main(["eval", RECIPE, f"eval.manifest={manifest}", f"output_dir={out_dir}", *GRID])
    assert code == 0 and f"skip {method}" in out and "calibrating" not in err
    assert (out_dir / "calibration" / "settings.json").stat().st_mtime_ns == before


def test_calibrated_without_train_clips_is_one_line(tmp_path):
    test_only = make_tiny_qa(tmp_path / "t", num=1, seconds=1.0, size=56, split="test")
    code, out, err = _main(["eval", RECIPE, f"eval.manifest={test_only}", f"output_dir={tmp_path / 'run'}", *GRID])
    assert code == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: eval.allocations: calibrated needs clips of the 'train' split")
    assert not (tmp_path / "run" / "cells").exists()  # failed before any cell (and before the model loaded)


def test_cached_streams_give_the_same_predictions(manifest, tmp_path, tiny_omni):
    """eval.cache_streams encodes each clip once for every cell: bit-identical option scores."""
    from omnimem_train.eval.grid import Cell, run_cell
    from omnimem_train.streaming.encoder_cache import EncoderCache

    cfg = load_config(RECIPE, [f"eval.manifest={manifest}", f"output_dir={tmp_path}", *GRID])
    samples = read_manifest(manifest, "test")
    cells = [Cell("omnimem", budget_fraction=FRACTION, allocation="uniform"), Cell("full")]
    cache = EncoderCache(tiny_omni)
    for cell in cells:
        plain = run_cell(tiny_omni, cfg, cell, samples)
        plain_rec = _records(tmp_path / "cells" / cell.name / "predictions.jsonl")
        cached = run_cell(tiny_omni, cfg, cell, samples, cache=cache)
        cached_rec = _records(tmp_path / "cells" / cell.name / "predictions.jsonl")
        assert [r["option_scores"] for r in cached_rec] == [r["option_scores"] for r in plain_rec]
        assert [r["budget"] for r in cached_rec] == [r["budget"] for r in plain_rec]
        assert plain["accuracy"] == cached["accuracy"]
    assert cache.misses == len(samples) and cache.hits == len(samples)  # encoded once, reused by the 2nd cell
