"""`omnimem-train eval` end to end on the tiny model and a tiny_qa manifest: the files of every
cell, metrics recomputed from the predictions by independent code, skipping finished cells,
`eval.fraction`, and one-line errors for bad input."""

import contextlib
import io
import json
import math
from pathlib import Path

import pytest

from data_prep.tiny_qa import make_tiny_qa
from omnimem_train.commands.cli import main
from omnimem_train.config import load_config

RECIPE = "recipes/eval/tiny_omni.yaml"
GRID = ["eval.scorers=[omnimem,recency]", "eval.budgets=[16]", "eval.budget_fractions=[]",
        "eval.allocations=[uniform,blind]", "memory.group_size=32", "device=cpu"]
CELLS = ["full", "omnimem-16-uniform", "omnimem-16-blind", "recency-16-uniform", "recency-16-blind"]


@pytest.fixture(scope="module", autouse=True)
def _env(tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: extra threads only contend with whatever else runs
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMNIMEM_HOME", str(tmp_path_factory.mktemp("omnimem_home")))
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return str(make_tiny_qa(tmp_path_factory.mktemp("data"), num=4, seconds=2.0, size=56, split="test"))


def _main(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def grid(manifest, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("eval") / "run"
    code, out, err = _main(["eval", RECIPE, f"eval.manifest={manifest}", f"output_dir={out_dir}", *GRID])
    assert code == 0, err
    return out_dir, out


def _predictions(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _wilson(k, n, z=1.96):
    # The interval's ends are the roots p of (p - k/n)^2 = z^2 p (1 - p) / n.
    a = 1 + z * z / n
    b = -(2 * k / n + z * z / n)
    c = (k / n) ** 2
    disc = math.sqrt(max(b * b - 4 * a * c, 0.0))
    return (-b - disc) / (2 * a), (-b + disc) / (2 * a)


def test_every_cell_writes_its_files(grid, manifest):
    out_dir, out = grid
    for name in CELLS:
        cell = out_dir / "cells" / name
        for f in ("predictions.jsonl", "metrics.json", "config.yaml"):
            assert (cell / f).is_file(), f"{cell / f} missing"
    png = (out_dir / "accuracy_vs_budget.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    assert (out_dir / "config.yaml").is_file()
    summary = json.loads((out_dir / "summary.json").read_text())
    assert [c["cell"] for c in summary["cells"]] == CELLS
    assert summary["samples"] == 4
    for name in CELLS:
        assert json.loads((out_dir / "cells" / name / "metrics.json").read_text()) in summary["cells"]
    table = out[out.index("scorer"):]
    assert "accuracy" in table and "KV MiB" in table and "samples/s" in table
    assert all(any(line.split()[:1] == [c.split("-")[0]] for line in table.splitlines()) for c in CELLS)


def test_metrics_match_the_predictions(grid, manifest):
    out_dir, _ = grid
    truth = {json.loads(line)["id"]: json.loads(line) for line in Path(manifest).read_text().splitlines()}
    for name in CELLS:
        cell = out_dir / "cells" / name
        preds = _predictions(cell / "predictions.jsonl")
        m = json.loads((cell / "metrics.json").read_text())
        assert [p["id"] for p in preds] == list(truth)
        for p in preds:
            assert p["answer"] == truth[p["id"]]["answer"]
            assert p["question_type"] == truth[p["id"]]["question_type"]
            assert len(p["option_scores"]) == 4
            assert p["choice"] == "ABCD"[max(range(4), key=p["option_scores"].__getitem__)]
            assert p["correct"] == (p["choice"] == p["answer"])
        k, n = sum(p["correct"] for p in preds), len(preds)
        assert (m["n"], m["correct"]) == (n, k)
        assert m["accuracy"] == pytest.approx(k / n)
        assert m["ci"] == pytest.approx(list(_wilson(k, n)), abs=1e-3)
        assert m["ci"][0] <= m["accuracy"] <= m["ci"][1]
        types = {p["question_type"] for p in preds}
        assert set(m["per_type"]) == types
        for t in types:
            sub = [p["correct"] for p in preds if p["question_type"] == t]
            row = m["per_type"][t]
            assert (row["n"], row["correct"]) == (len(sub), sum(sub))
            assert row["ci"] == pytest.approx(list(_wilson(sum(sub), len(sub))), abs=1e-3)
        assert m["kv_bytes_mean"] == pytest.approx(sum(p["retained_kv_bytes"] for p in preds) / n)
        assert m["total_bytes_mean"] == pytest.approx(sum(p["retained_total_bytes"] for p in preds) / n)
        assert m["samples_per_s"] == pytest.approx(n / sum(p["seconds"] for p in preds))


def test_cells_run_their_memory_settings(grid):
    out_dir, _ = grid
    full = json.loads((out_dir / "cells" / "full" / "metrics.json").read_text())
    assert full["scorer"] == "full" and full["budget"] is None
    for name in CELLS[1:]:
        scorer, budget, allocation = name.split("-")
        cfg = load_config(out_dir / "cells" / name / "config.yaml")
        assert (cfg.memory.scorer, cfg.memory.budget) == (scorer, int(budget))
        assert cfg.memory.modality_aware == (allocation == "uniform")
        m = json.loads((out_dir / "cells" / name / "metrics.json").read_text())
        assert (m["scorer"], m["budget"], m["allocation"]) == (scorer, int(budget), allocation)
        assert all(p["budget"] == 16 for p in _predictions(out_dir / "cells" / name / "predictions.jsonl"))
        assert m["kv_bytes_mean"] < full["kv_bytes_mean"]  # 16 media tokens per layer instead of ~58
    assert load_config(out_dir / "cells" / "full" / "config.yaml").memory.scorer == "full"


def test_rerun_skips_finished_cells(grid, manifest):
    out_dir, _ = grid
    files = {p: p.stat().st_mtime_ns for p in out_dir.rglob("*") if p.is_file()}
    code, out, err = _main(["eval", RECIPE, f"eval.manifest={manifest}", f"output_dir={out_dir}", *GRID])
    assert code == 0, err
    for name in CELLS:
        assert f"skip {name}" in out
    assert "accuracy" in out  # the summary table is still printed
    assert {p: p.stat().st_mtime_ns for p in out_dir.rglob("*") if p.is_file()} == files


def test_a_model_retrained_in_place_makes_its_cells_stale(manifest, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from omnimem_train.models.builtin import resolve_builtin

    model = tmp_path / "model"
    shutil.copytree(resolve_builtin("tiny-omni")[0], model)
    small = ["eval.scorers=[recency]", "eval.budgets=[16]", "eval.allocations=[uniform]", "memory.group_size=32",
             "device=cpu", f"eval.manifest={manifest}", f"output_dir={tmp_path / 'run'}",
             f"model_name_or_path={model}"]
    assert _main(["eval", RECIPE, *small])[0] == 0
    first = json.loads((tmp_path / "run" / "cells" / "full" / "metrics.json").read_text())
    assert str(model / "model.safetensors") in first["input_files"]
    code, out, _ = _main(["eval", RECIPE, *small])
    assert code == 0 and "skip full" in out and "skip recency-16-uniform" in out
    weights = load_file(str(model / "model.safetensors"))  # "retrain" into the same folder
    save_file({k: v * 1.01 for k, v in weights.items()}, str(model / "model.safetensors"), metadata={"format": "pt"})
    code, out, err = _main(["eval", RECIPE, *small])
    assert code == 0, err
    assert "skip" not in out  # both cells ran again on the new weights
    again = json.loads((tmp_path / "run" / "cells" / "full" / "metrics.json").read_text())
    assert again["input_files"] != first["input_files"]


def test_fraction_evaluates_the_first_samples(manifest, tmp_path):
    ids = [json.loads(line)["id"] for line in Path(manifest).read_text().splitlines()]
    small = ["eval.scorers=[recency]", "eval.budgets=[16]", "eval.allocations=[uniform]", "memory.group_size=32",
             "device=cpu", f"eval.manifest={manifest}", f"output_dir={tmp_path}"]
    code, out, err = _main(["eval", RECIPE, *small, "eval.fraction=0.5"])
    assert code == 0, err
    for name in ("full", "recency-16-uniform"):
        assert [p["id"] for p in _predictions(tmp_path / "cells" / name / "predictions.jsonl")] == ids[:2]
        assert json.loads((tmp_path / "cells" / name / "metrics.json").read_text())["n"] == 2
    # Other settings (here the whole split) make the finished cells stale: they are run again.
    code, out, err = _main(["eval", RECIPE, *small, "eval.fraction=1.0"])
    assert code == 0, err
    assert "skip" not in out
    assert json.loads((tmp_path / "summary.json").read_text())["samples"] == 4
    assert len(_predictions(tmp_path / "cells" / "full" / "predictions.jsonl")) == 4


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["eval.scorers=[omnimem,nope]"], "error: eval.scorers: unknown scorer 'nope'; known: "),
        (["eval.manifest=/nonexistent/manifest.jsonl"], "error: eval.manifest: /nonexistent/manifest.jsonl: manifest not found"),
        (["eval.manifest=null"], "error: eval.manifest: not set"),
        (["eval.split=val"], "has no samples of split 'val' (it has: test)"),
        (["eval.fraction=0"], "key 'eval.fraction': expected a fraction in (0, 1], got 0"),
        (["eval.allocations=[uniform,deaf]"], "key 'eval.allocations': expected a list of uniform | calibrated | blind"),
        (["eval.per_head_scorers=[omnimem]"], "error: eval.per_head_scorers: no per-head variant of scorer 'omnimem'"),
    ],
)
def test_bad_input_is_one_line_error(overrides, expected, manifest, tmp_path):
    code, out, err = _main(["eval", RECIPE, f"eval.manifest={manifest}", f"output_dir={tmp_path}", *overrides])
    assert code == 2
    assert err.count("\n") == 1 and expected in err, err
    assert "known: " not in expected or "omnimem" in err and "recency" in err
    assert not (tmp_path / "cells").exists()  # failed before loading the model or writing a cell


def test_cells_take_the_other_memory_settings_from_the_model(manifest, tmp_path):
    import shutil

    from omnimem_train.models.builtin import resolve_builtin

    model = shutil.copytree(resolve_builtin("tiny-omni")[0], tmp_path / "model")
    (model / "omnimem_memory.json").write_text(json.dumps(
        {"compression": "streaming", "scorer": "omnimem", "budget": 999, "group_size": 24, "sink_tokens": 0,
         "rho": 3.0}))
    out_dir = tmp_path / "run"
    code, out, err = _main(["eval", "--model", str(model), f"eval.manifest={manifest}", f"output_dir={out_dir}",
                            "eval.scorers=[recency]", "eval.budgets=[16]", "eval.allocations=[uniform]",
                            "eval.fraction=0.25", "memory.rho=4.0", "device=cpu"])
    assert code == 0, err
    assert "omnimem_memory.json" in err and "group_size=24" in err
    cell = load_config(out_dir / "cells" / "recency-16-uniform" / "config.yaml").memory
    assert (cell.scorer, cell.budget) == ("recency", 16)  # the cell's own
    assert (cell.group_size, cell.sink_tokens, cell.rho) == (24, 0, 4.0)  # the model's, unless overridden
    full = load_config(out_dir / "cells" / "full" / "config.yaml").memory
    assert (full.scorer, full.budget, full.group_size) == ("full", None, 24)


def test_markdown_summary_has_one_row_per_cell_and_per_type_columns():
    from omnimem_train.eval.grid import format_markdown

    rows = [
        {"scorer": "full", "budget": None, "budget_fraction": None, "allocation": None, "accuracy": 0.5,
         "ci": [0.3, 0.7], "n": 4, "kv_bytes_mean": 2**20, "total_bytes_mean": 2**21,
         "per_type": {"a": {"accuracy": 1.0}, "b": {"accuracy": 0.0}}},
        {"scorer": "omnimem", "budget": None, "budget_fraction": 0.0625, "allocation": "uniform", "accuracy": 0.25,
         "ci": [0.05, 0.7], "n": 4, "kv_bytes_mean": 1024, "total_bytes_mean": 3072, "per_type": {"a": {"accuracy": 0.5}}},
    ]
    lines = format_markdown(rows).strip().splitlines()
    assert lines[0] == "| scorer | budget | allocation | accuracy [95% CI] | a | b | n | kept | KV MiB | total MiB |"
    assert lines[2] == "| full | - | - | 0.500 [0.300, 0.700] | 1.00 | 0.00 | 4 | - | 1.000 | 2.000 |"
    assert lines[3].startswith("| omnimem | 0.0625x | uniform | 0.250 [0.050, 0.700] | 0.50 | - | 4 |")
    assert len(lines) == 4


def test_group_by_gives_accuracy_per_value(manifest, tmp_path):
    # the long testbed's `depth`: a manifest field beyond the standard ones, an accuracy row per value
    lines = [json.loads(line) for line in Path(manifest).read_text().splitlines() if line.strip()]
    for i, line in enumerate(lines):
        line["depth"] = ("first", "middle", "last")[i % 3]
        line["video"] = str(Path(manifest).parent / line["video"])
    tagged = tmp_path / "tagged.jsonl"
    tagged.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out_dir = tmp_path / "run"
    code, out, err = _main(["eval", RECIPE, f"eval.manifest={tagged}", f"output_dir={out_dir}", "eval.scorers=[recency]",
                            "eval.budgets=[16]", "eval.allocations=[uniform]", "eval.group_by=[depth]",
                            "memory.group_size=32", "device=cpu"])
    assert code == 0, err
    for cell in ("full", "recency-16-uniform"):
        preds = _predictions(out_dir / "cells" / cell / "predictions.jsonl")
        assert [p["groups"]["depth"] for p in preds] == ["first", "middle", "last", "first"]
        m = json.loads((out_dir / "cells" / cell / "metrics.json").read_text())
        for depth in ("first", "middle", "last"):
            mine = [p["correct"] for p in preds if p["groups"]["depth"] == depth]
            assert m["per_group"]["depth"][depth]["correct"] == sum(mine)
            assert m["per_group"]["depth"][depth]["n"] == len(mine)
    summary = (out_dir / "summary.md").read_text()
    assert "Accuracy [95% CI] per `depth`:" in summary and "| cell | first | middle | last |" in summary
    assert summary.count("(n 2)") == 2 and summary.count("(n 1)") == 4  # first: 2 samples; middle, last: 1
    # a manifest without the field: one line, before any model is loaded
    code, out, err = _main(["eval", RECIPE, f"eval.manifest={manifest}", f"output_dir={tmp_path / 'b'}",
                            "eval.group_by=[depth]", "device=cpu"])
    assert code == 2 and err.count("\n") == 1
    assert "error: eval.group_by: " in err and "has no field 'depth'" in err, err
    assert not (tmp_path / "b" / "cells").exists()
