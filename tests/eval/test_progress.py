"""`omnimem-train eval` with its output captured (not a terminal): each cell's progress is plain
lines with done/total, a rate and an ETA, at most one per interval, and a closing line per cell."""

import contextlib
import io
import re

import pytest

from data_prep.tiny_qa import make_tiny_qa
from omnimem_train.commands.cli import main
from omnimem_train.utils.progress import INTERVAL_ENV

RECIPE = "recipes/eval/tiny_omni.yaml"
GRID = ["eval.scorers=[recency]", "eval.budgets=[16]", "eval.budget_fractions=[]", "eval.allocations=[uniform]",
        "memory.group_size=32", "device=cpu"]
CELLS = ["full", "recency-16-uniform"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return str(make_tiny_qa(tmp_path_factory.mktemp("data"), num=4, seconds=2.0, size=56, split="test"))


def _eval(manifest, out_dir, interval, monkeypatch) -> str:
    monkeypatch.setenv(INTERVAL_ENV, interval)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["eval", RECIPE, f"eval.manifest={manifest}", f"output_dir={out_dir}", *GRID])
    assert code == 0, err.getvalue()
    return err.getvalue()


def _cell_lines(err: str, cell: str) -> list[str]:
    # split on newlines only: a line holding a `\r` redraw would not match whole
    return [x for x in err.split("\n") if x.startswith(f"eval {cell}: ")]


def test_every_sample_is_a_line_with_a_short_interval(manifest, tmp_path, monkeypatch):
    err = _eval(manifest, tmp_path / "run", "0", monkeypatch)
    for cell in CELLS:
        lines = _cell_lines(err, cell)
        running = [re.fullmatch(rf"eval {cell}: sample (\d)/4, [\d.]+ (samples/s|s/sample), ETA \d+ s", x)
                   for x in lines[:-1]]
        assert all(running) and [int(m.group(1)) for m in running] == [1, 2, 3], lines
        assert re.fullmatch(rf"eval {cell}: sample 4/4, [\d.]+ (samples/s|s/sample), done in \d+ s", lines[-1]), lines


def test_a_long_interval_leaves_one_closing_line_per_cell(manifest, tmp_path, monkeypatch):
    err = _eval(manifest, tmp_path / "run", "3600", monkeypatch)
    for cell in CELLS:
        lines = _cell_lines(err, cell)
        assert len(lines) == 1 and lines[0].startswith(f"eval {cell}: sample 4/4, ") and "done in" in lines[0], err
    assert "checking media" not in err  # a quick media check stays quiet
