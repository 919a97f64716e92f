"""`eval.budget_axis`: the grid at equal tokens (the paper's axis) or at equal total retained bytes
(KV + extra state), with cells named apart, the axis and the tokens kept in their metrics, and the
total bytes in the tables."""

import contextlib
import io
import json

import pytest

from data_prep.tiny_qa import make_tiny_qa
from omnimem_train.commands.cli import main
from omnimem_train.config import load_config
from omnimem_train.config.schema import Config, EvalConfig
from omnimem_train.errors import ConfigError
from omnimem_train.eval.grid import budget_str, cell_config, format_markdown, format_table, grid_cells

RECIPE = "recipes/eval/tiny_omni.yaml"
GRID = ["eval.scorers=[omnimem,value_norm]", "eval.budgets=[64]", "eval.budget_fractions=[]",
        "eval.allocations=[uniform]", "memory.group_size=32", "device=cpu"]


def test_cells_at_equal_bytes_are_named_apart_and_share_full_memory():
    tokens = EvalConfig(scorers=["omnimem", "frame_drop"], per_head_scorers=["h2o"], budgets=[64],
                        budget_fractions=[0.0625], allocations=["uniform", "blind"])
    by_bytes = EvalConfig(**{**tokens.__dict__, "budget_axis": "bytes"})
    names = [c.name for c in grid_cells(tokens)]
    byte_names = [c.name for c in grid_cells(by_bytes)]
    assert byte_names[0] == "full" and byte_names[1:] == [n + "-bytes" for n in names[1:]]
    assert len(set(names + byte_names)) == len(names) * 2 - 1  # only `full` is shared
    cfg_t, cfg_b = Config(eval=tokens), Config(eval=by_bytes)
    full_t, full_b = grid_cells(tokens)[0], grid_cells(by_bytes)[0]
    assert cell_config(cfg_t, full_t) == cell_config(cfg_b, full_b)  # one full-memory cell serves both axes
    cell = grid_cells(by_bytes)[1]
    assert cell.identity()["budget_axis"] == "bytes" and cell_config(cfg_b, cell).eval.budget_axis == "bytes"
    assert budget_str(cell.identity()) == "64@bytes" and budget_str(grid_cells(tokens)[1].identity()) == "64"


@pytest.mark.parametrize("override", ["eval.budget_axis=byte", "eval.budget_axis=Tokens"])
def test_a_bad_budget_axis_fails_at_start_up_in_one_line(override):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert "eval.budget_axis" in str(info.value) and "tokens | bytes" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    # 4-s clips at 112 px: 64 visual + 100 audio tokens, about 30 text tokens
    return str(make_tiny_qa(tmp_path_factory.mktemp("data"), num=3, seconds=4.0, size=112, split="test"))


def _eval(argv):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err.getvalue()
    return out.getvalue()


def test_grid_at_equal_bytes(manifest, tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIMEM_HOME", str(tmp_path / "home"))
    out_dir = tmp_path / "run"
    args = ["eval", RECIPE, f"eval.manifest={manifest}", f"output_dir={out_dir}", *GRID]
    _eval(args)
    out = _eval([*args, "eval.budget_axis=bytes"])
    assert "skip full" in out  # the full-memory cell of the tokens grid serves the bytes grid

    def metrics(name):
        return json.loads((out_dir / "cells" / name / "metrics.json").read_text())

    tok = {s: metrics(f"{s}-64-uniform") for s in ("omnimem", "value_norm")}
    byt = {s: metrics(f"{s}-64-uniform-bytes") for s in ("omnimem", "value_norm")}
    assert {m["budget_axis"] for m in tok.values()} == {"tokens"} and {m["budget_axis"] for m in byt.values()} == {"bytes"}
    # equal tokens: OmniMem keeps a hidden state per token beside K/V, about twice the bytes
    assert tok["omnimem"]["retained_media_tokens_mean"] == tok["value_norm"]["retained_media_tokens_mean"] == 64
    assert 1.6 < tok["omnimem"]["total_bytes_mean"] / tok["value_norm"]["total_bytes_mean"] < 2.2
    # equal bytes: fewer tokens for OmniMem, the same total (to within a token's bytes per layer)
    assert byt["value_norm"]["total_bytes_mean"] == tok["value_norm"]["total_bytes_mean"]
    assert byt["omnimem"]["retained_media_tokens_mean"] == byt["omnimem"]["budget_tokens_mean"] < 64
    assert 0.97 <= byt["omnimem"]["total_bytes_mean"] / byt["value_norm"]["total_bytes_mean"] <= 1.0
    preds = [json.loads(line) for line in (out_dir / "cells" / "omnimem-64-uniform-bytes" / "predictions.jsonl")
             .read_text().splitlines()]
    assert all(p["retained_media_tokens"] == p["budget"] for p in preds)

    summary = json.loads((out_dir / "summary.json").read_text())
    assert [c["cell"] for c in summary["cells"]] == ["full", "omnimem-64-uniform-bytes", "value_norm-64-uniform-bytes"]
    table = format_table(summary["cells"])
    assert "total MiB" in table and "kept" in table and "64@bytes" in table
    md = format_markdown(summary["cells"])
    assert "| total MiB |" in md and "64@bytes" in md
    assert (out_dir / "accuracy_vs_budget.png").read_bytes().startswith(b"\x89PNG")


def test_plot_has_a_panel_of_total_retained_bytes(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from omnimem_train.eval.plots import plot_accuracy_vs_budget

    panels = []
    real = Figure.add_subplot

    def add_subplot(self, *args, **kwargs):
        ax = real(self, *args, **kwargs)
        panels.append(ax)
        return ax

    monkeypatch.setattr(Figure, "add_subplot", add_subplot)
    row = {"scorer": "omnimem", "budget": 64, "budget_fraction": None, "allocation": "uniform", "accuracy": 0.5,
           "ci": [0.2, 0.8], "total_bytes_mean": 3 * 2**20, "budget_axis": "bytes"}
    rows = [{"scorer": "full", "budget": None, "budget_fraction": None, "allocation": None, "accuracy": 0.7,
             "ci": [0.4, 0.9], "total_bytes_mean": 8 * 2**20},
            row, dict(row, budget=128, total_bytes_mean=6 * 2**20),
            dict(row, scorer="value_norm", total_bytes_mean=3 * 2**20 - 1000)]
    path = plot_accuracy_vs_budget(rows, tmp_path / "p.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    assert [ax.get_xlabel() for ax in panels] == [
        "budget (audio+visual tokens per layer) at equal total bytes", "total retained MiB per sample (KV + extra state)"]
    xs = sorted(x for line in panels[1].get_lines() if line.get_marker() not in (None, "None", "")
                for x in line.get_xdata())  # the points (not the full-memory line across the panel)
    assert xs[0] == pytest.approx((3 * 2**20 - 1000) / 2**20) and xs[-1] == pytest.approx(8.0)  # full: its star
