"""`omnimem-train eval` with a clip that does not decode: the selected samples' media are checked
before the model loads; `data.on_bad_sample=error` stops with one line naming the manifest line and
the field, `skip` evaluates every cell on the same other samples and lists the skipped rows."""

import contextlib
import io
import json
import shutil

import pytest

from data_prep.tiny_qa import make_tiny_qa
from omnimem_train.commands.cli import main
from omnimem_train.data import read_manifest
from tests.media.bad_media import garbage

RECIPE = "recipes/eval/tiny_omni.yaml"
GRID = ["eval.scorers=[recency]", "eval.budgets=[16]", "eval.budget_fractions=[]", "eval.allocations=[uniform]",
        "memory.group_size=32", "device=cpu"]
CELLS = ["full", "recency-16-uniform"]
BAD_LINE = 2


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return make_tiny_qa(tmp_path_factory.mktemp("data"), num=4, seconds=2.0, size=56, split="test")


@pytest.fixture
def data(clean, tmp_path):
    """A copy of the test set -> (its manifest, its samples, the clip of BAD_LINE made garbage)."""
    manifest = shutil.copytree(clean.parent, tmp_path / "data") / clean.name
    samples = read_manifest(manifest)
    return manifest, samples, str(garbage(samples[BAD_LINE - 1].video))


def _main(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _ids(run, cell):
    return [json.loads(x)["id"] for x in (run / "cells" / cell / "predictions.jsonl").read_text().splitlines()]


def test_a_bad_clip_stops_eval_before_the_model_loads(data, tmp_path, monkeypatch):
    manifest, _, clip = data

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the media were checked")

    monkeypatch.setattr("omnimem_train.models.load.load_adapter", refuse)
    run = tmp_path / "run"
    code, _, err = _main(["eval", RECIPE, f"eval.manifest={manifest}", f"output_dir={run}", *GRID])
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {manifest}:{BAD_LINE}: video: {clip}: cannot be decoded as media ("), err
    assert not (run / "cells").exists() and not (run / "config.yaml").exists()  # nothing run, nothing written


def test_skip_evaluates_every_cell_on_the_same_other_samples(data, tmp_path):
    manifest, samples, clip = data
    run = tmp_path / "run"
    argv = ["eval", RECIPE, f"eval.manifest={manifest}", f"output_dir={run}", *GRID, "data.on_bad_sample=skip"]
    code, _, err = _main(argv)
    assert code == 0, err
    assert f"skipped 1 of 4 samples with unreadable media: see {run / 'skipped.jsonl'}" in err
    kept = [s.id for s in samples if s.video != clip]
    for cell in CELLS:
        assert _ids(run, cell) == kept
        assert json.loads((run / "cells" / cell / "metrics.json").read_text())["n"] == 3
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["samples"], summary["skipped"]) == (3, 1)
    skipped = [json.loads(x) for x in (run / "skipped.jsonl").read_text().splitlines()]
    assert [(r["line"], r["id"]) for r in skipped] == [(BAD_LINE, samples[BAD_LINE - 1].id)]
    assert skipped[0]["reason"].startswith(f"video: {clip}: cannot be decoded as media")

    # The clip repaired: the cells finished without it are stale, every cell runs on all four.
    shutil.copyfile(samples[0].video, clip)
    code, out, err = _main(argv)
    assert code == 0, err
    assert "skip " not in out and "skipped" not in err and not (run / "skipped.jsonl").exists()
    for cell in CELLS:
        assert _ids(run, cell) == [s.id for s in samples]
    assert json.loads((run / "summary.json").read_text())["samples"] == 4
