"""`omnimem-train train` with a clip that does not decode: every sample's media are checked before
the model loads; `data.on_bad_sample=error` stops with one line naming the manifest line and the
field, `skip` trains on the rest and lists the skipped rows in <output_dir>/skipped.jsonl."""

import json
import shutil

import pytest

from omnimem_train.commands.cli import main
from omnimem_train.config import load_config
from omnimem_train.data import read_manifest
from tests.media.bad_media import garbage, truncated

RECIPE = "recipes/train/tiny_cpu.yaml"
BAD_LINE = 3  # the third of the tiny manifest's four rows


@pytest.fixture
def bad_manifest(tiny_manifest, tmp_path):
    """A copy of the tiny training set -> (its manifest, the clip of BAD_LINE, for a test to spoil)."""
    data = shutil.copytree(tiny_manifest.parent, tmp_path / "data")
    manifest = data / tiny_manifest.name
    return manifest, read_manifest(manifest)[BAD_LINE - 1].video


def _no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the media were checked")

    monkeypatch.setattr("omnimem_train.models.load.load_adapter", refuse)


@pytest.mark.parametrize(
    ("spoil", "problem"),
    [(garbage, "cannot be decoded as media (Invalid data found when processing input)"),
     (lambda clip: truncated(clip, clip), "cannot decode the last second of its video stream (decoding stops at ")],
    ids=["garbage", "truncated"],
)
def test_a_bad_clip_stops_training_before_the_model_loads(bad_manifest, tmp_path, capsys, monkeypatch, spoil,
                                                          problem):
    manifest, clip = bad_manifest
    spoil(clip)
    _no_model_load(monkeypatch)
    code = main(["train", RECIPE, f"dataset={manifest}", f"output_dir={tmp_path / 'run'}", "report_to=none",
                 "max_steps=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {manifest}:{BAD_LINE}: video: {clip}: {problem}"), err
    assert not (tmp_path / "run" / "skipped.jsonl").exists()


def test_skip_trains_on_the_other_samples_and_lists_the_bad_one(bad_manifest, tmp_path, capsys):
    from omnimem_train.train.run import run_training

    manifest, clip = bad_manifest
    garbage(clip)
    rows = read_manifest(manifest)
    out = tmp_path / "run"
    cfg = load_config(RECIPE, [f"dataset={manifest}", f"output_dir={out}", "report_to=none", "max_steps=2",
                               "per_device_train_batch_size=1", "memory.group_size=16", "data.on_bad_sample=skip"])
    trainer = run_training(cfg)
    assert trainer.state.global_step == 2
    assert sorted(trainer.train_dataset["id"]) == sorted(s.id for s in rows if s.video != clip)
    skipped = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert len(skipped) == 1 and skipped[0]["line"] == BAD_LINE and skipped[0]["id"] == rows[BAD_LINE - 1].id
    assert skipped[0]["reason"].startswith(f"video: {clip}: cannot be decoded as media")
    assert f"skipped 1 of 4 samples with unreadable media: see {out / 'skipped.jsonl'}" in capsys.readouterr().err


def test_on_bad_sample_takes_error_or_skip(tmp_path, capsys):
    assert load_config(RECIPE).data.on_bad_sample == "error"
    code = main(["train", RECIPE, f"output_dir={tmp_path}", "data.on_bad_sample=drop"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: override 'data.on_bad_sample=drop': key 'data.on_bad_sample': "
                                 "expected one of error | skip, got 'drop'"]
