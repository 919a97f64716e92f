"""Checkpoints are complete or absent, run folders never mix, and a resume continues the run it
names: `latest` skips half-written checkpoints, a changed setting that would alter the run is
refused naming the key, and metrics.jsonl holds each step once."""

import json
import shutil

import pytest
from safetensors.torch import load_file

from omnimem_train.commands.cli import main
from omnimem_train.config import config_keys, load_config
from omnimem_train.errors import ConfigError
from omnimem_train.train import checkpoints
from omnimem_train.train.run import run_training

RECIPE = "recipes/train/tiny_cpu.yaml"
BASE = ["report_to=none", "per_device_train_batch_size=1", "memory.group_size=16", "memory.budget=20",
        "learning_rate=0.001"]


def _args(tiny_manifest, out, *extra):
    return [f"dataset={tiny_manifest}", f"output_dir={out}", *BASE, *extra]


def _train(tiny_manifest, out, *extra):
    return main(["train", RECIPE, *_args(tiny_manifest, out, *extra)])


def _loss_steps(run):
    return [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def _adapter(path):
    return load_file(str(path / "adapter_model.safetensors"))


def _assert_same(a, b):
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0


def _one_error_line(capsys):
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def four_steps(tiny_manifest, tmp_path_factory):
    """A finished 4-step run (checkpoints 2 and 4, lr 0.001) and its final adapter."""
    run = tmp_path_factory.mktemp("four") / "run"
    assert _train(tiny_manifest, run, "max_steps=4", "save_steps=2") == 0
    return run, _adapter(run)


def _copy(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


# --- run folders never mix -------------------------------------------------------------------


def test_training_into_a_used_folder_is_refused_and_overwrite_starts_afresh(tiny_manifest, four_steps, tmp_path,
                                                                          capsys):
    run = _copy(four_steps[0], tmp_path)
    before = sorted(p.name for p in run.iterdir())
    assert _train(tiny_manifest, run, "max_steps=2", "save_steps=2") == 2
    assert _one_error_line(capsys) == (
        f"error: {run}: output_dir: holds an earlier run (checkpoint-4, checkpoint-2, adapter_model.safetensors, "
        f"...); resume it with resume_from_checkpoint=latest or pass --overwrite")
    assert sorted(p.name for p in run.iterdir()) == before  # nothing touched
    assert main(["train", RECIPE, *_args(tiny_manifest, run, "max_steps=2", "save_steps=2"), "--overwrite"]) == 0
    # Only the new run is there: its one checkpoint, its two logged steps.
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2"]
    assert _loss_steps(run) == [1, 2]
    assert (run / checkpoints.RUN_MARKER).is_file()


def test_overwrite_refuses_a_folder_without_the_run_marker(tiny_manifest, tmp_path, capsys):
    run = tmp_path / "mine"
    (run / "checkpoint-3").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    (run / "notes.txt").write_text("keep me")
    code = main(["train", RECIPE, *_args(tiny_manifest, run, "max_steps=1"), "--overwrite"])
    assert code == 2
    assert _one_error_line(capsys) == (
        f"error: {run}: output_dir: holds checkpoint-3, metrics.jsonl but no {checkpoints.RUN_MARKER} marker "
        f"(not a run folder omnimem-train wrote); --overwrite deletes only such folders: remove it yourself "
        f"or pick another output_dir")
    assert (run / "notes.txt").read_text() == "keep me" and (run / "checkpoint-3").is_dir()


def test_an_unwritable_output_dir_fails_before_the_model_loads(tiny_manifest, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert _train(tiny_manifest, blocker, "max_steps=1") == 2
    assert _one_error_line(capsys) == f"error: {blocker}: output_dir: exists and is not a folder"


# --- complete-or-absent checkpoints, `latest` ------------------------------------------------


def _break(ckpt, how):
    if how == "no manifest":  # as a save killed before it finished, written in place, leaves it
        (ckpt / checkpoints.MANIFEST).unlink()
    elif how == "optimizer missing":
        (ckpt / "optimizer.pt").unlink()
    elif how == "optimizer truncated":
        data = (ckpt / "optimizer.pt").read_bytes()
        (ckpt / "optimizer.pt").write_bytes(data[: len(data) // 2])
    elif how == "empty trainer state":
        (ckpt / "trainer_state.json").write_text("")


@pytest.mark.parametrize("how", ["no manifest", "optimizer missing", "optimizer truncated", "empty trainer state"])
def test_latest_skips_a_half_written_checkpoint_and_resumes_exactly(tiny_manifest, four_steps, tmp_path, capsys,
                                                                    how):
    run = _copy(four_steps[0], tmp_path)
    assert (run / "checkpoint-4" / checkpoints.MANIFEST).is_file() and checkpoints.incomplete(run / "checkpoint-4") is None
    _break(run / "checkpoint-4", how)
    for name in ("adapter_model.safetensors", "train_results.json"):  # the run died during that save
        (run / name).unlink()
    capsys.readouterr()
    run_training(load_config(RECIPE, _args(tiny_manifest, run, "max_steps=4", "save_steps=2",
                                           "resume_from_checkpoint=latest")))
    err = capsys.readouterr().err
    assert f"skipping incomplete {run / 'checkpoint-4'}" in err and f"resuming from {run / 'checkpoint-2'}" in err
    assert checkpoints.incomplete(run / "checkpoint-4") is None  # trained through step 4 again, saved complete
    _assert_same(_adapter(run), four_steps[1])  # equal to the uninterrupted run
    assert _loss_steps(run) == [1, 2, 3, 4]


def test_a_save_that_fails_midway_leaves_no_checkpoint(tiny_manifest, four_steps, tmp_path, monkeypatch, capsys):
    """A write failing inside the Trainer's save (a full disk: torch.save raises) leaves checkpoint-2
    as the newest checkpoint; `latest` resumes from it and ends equal to the uninterrupted run."""
    from omnimem_train.train.trainer import StreamingTrainer

    real = StreamingTrainer._save_rng_state

    def full_disk(self, output_dir):
        if self.state.global_step == 4:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
        return real(self, output_dir)

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(StreamingTrainer, "_save_rng_state", full_disk)
        with pytest.raises(RuntimeError, match="file write failed"):
            run_training(load_config(RECIPE, _args(tiny_manifest, run, "max_steps=4", "save_steps=2")))
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2"]
    run_training(load_config(RECIPE, _args(tiny_manifest, run, "max_steps=4", "save_steps=2",
                                           "resume_from_checkpoint=latest")))
    assert f"resuming from {run / 'checkpoint-2'}" in capsys.readouterr().err
    _assert_same(_adapter(run), four_steps[1])
    assert not list(run.glob(".partial-*"))


def test_latest_without_a_complete_checkpoint_is_one_line(tiny_manifest, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)  # no manifest
    assert _train(tiny_manifest, run, "max_steps=4", "resume_from_checkpoint=latest") == 2
    err = capsys.readouterr().err
    assert f"note: resume_from_checkpoint=latest: skipping incomplete {run / 'checkpoint-2'} (no {checkpoints.MANIFEST})" in err
    assert err.splitlines()[-1] == (f"error: {run}: resume_from_checkpoint: latest: no complete checkpoint-N folder "
                                    f"to resume (start a new run without resume_from_checkpoint)")


def test_an_incomplete_checkpoint_named_explicitly_is_refused(tiny_manifest, four_steps, tmp_path, capsys):
    run = _copy(four_steps[0], tmp_path)
    _break(run / "checkpoint-4", "optimizer missing")
    assert _train(tiny_manifest, run, "max_steps=4", f"resume_from_checkpoint={run / 'checkpoint-4'}") == 2
    assert _one_error_line(capsys) == (
        f"error: {run / 'checkpoint-4'}: resume_from_checkpoint: incomplete checkpoint (optimizer.pt is missing); "
        f"resume from a complete one (resume_from_checkpoint=latest picks the newest)")


def test_metrics_hold_each_step_once_after_a_resume(tiny_manifest, four_steps, tmp_path):
    run = _copy(four_steps[0], tmp_path)
    assert _train(tiny_manifest, run, "max_steps=4", "save_steps=2",
                  f"resume_from_checkpoint={run / 'checkpoint-2'}") == 0
    assert _loss_steps(run) == [1, 2, 3, 4]
    _assert_same(_adapter(run), four_steps[1])


def test_completeness_follows_the_manifest(tmp_path):
    ckpt = tmp_path / "checkpoint-1"
    (ckpt / "global_step1").mkdir(parents=True)
    (ckpt / "a.bin").write_bytes(b"12345")
    (ckpt / "global_step1" / "shard.pt").write_bytes(b"xy")
    assert checkpoints.incomplete(ckpt) == f"no {checkpoints.MANIFEST}"
    checkpoints.write_manifest(ckpt)
    assert json.loads((ckpt / checkpoints.MANIFEST).read_text())["files"] == {"a.bin": 5, "global_step1/shard.pt": 2}
    assert checkpoints.incomplete(ckpt) is None
    (ckpt / "global_step1" / "shard.pt").write_bytes(b"x")
    assert checkpoints.incomplete(ckpt) == "global_step1/shard.pt has 1 bytes, the manifest lists 2"
    (ckpt / checkpoints.MANIFEST).write_text("{")
    assert checkpoints.incomplete(ckpt) == f"{checkpoints.MANIFEST} is unreadable"


def test_metrics_truncation_drops_later_steps_and_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.9}, {"step": 3, "loss": 0.8}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')
    checkpoints.truncate_metrics(path, 2)
    assert [json.loads(s) for s in path.read_text().splitlines()] == rows[:2]


# --- resume compares the config --------------------------------------------------------------


@pytest.mark.parametrize(
    "change,message",
    [("learning_rate=0.0005", "learning_rate: the checkpoint was trained with 0.001, this run asks for 0.0005"),
     ("lora_rank=4", "lora_rank: the checkpoint was trained with 8, this run asks for 4"),
     ("memory.budget=10", "memory.budget: the checkpoint was trained with 20, this run asks for 10")],
)
def test_resume_refuses_a_changed_setting_naming_it(tiny_manifest, four_steps, tmp_path, capsys, change, message):
    run = _copy(four_steps[0], tmp_path)
    assert _train(tiny_manifest, run, "max_steps=4", "save_steps=2", "resume_from_checkpoint=latest", change) == 2
    assert _one_error_line(capsys) == (
        f"error: {run / 'checkpoint-4' / 'config.yaml'}: {message}; resuming would not continue that run "
        f"(start a new run, or set it back)")


def test_resume_accepts_a_longer_run_and_notes_it(tiny_manifest, four_steps, tmp_path, capsys):
    run = _copy(four_steps[0], tmp_path)
    assert _train(tiny_manifest, run, "max_steps=5", "save_steps=2", "resume_from_checkpoint=latest") == 0
    changed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: resuming with changed")]
    assert len(changed) == 1 and "max_steps (4 -> 5)" in changed[0]  # (the copy's output_dir changed too)
    assert _loss_steps(run) == [1, 2, 3, 4, 5]


def test_resume_refuses_a_checkpoint_past_max_steps(tiny_manifest, four_steps, tmp_path, capsys):
    run = _copy(four_steps[0], tmp_path)
    assert _train(tiny_manifest, run, "max_steps=2", "resume_from_checkpoint=latest") == 2
    assert _one_error_line(capsys) == (
        f"error: {run / 'checkpoint-4'}: max_steps: the checkpoint is at step 4, past this run's max_steps 2; "
        f"nothing would train (raise max_steps, or start a new run)")


def test_resume_key_lists_are_disjoint_and_name_real_settings():
    keys = config_keys()
    for entry in checkpoints.RESUME_MUST_MATCH + checkpoints.RESUME_MAY_CHANGE:
        assert entry in keys or any(k.startswith(entry + ".") for k in keys), entry
    assert not set(checkpoints.RESUME_MUST_MATCH) & set(checkpoints.RESUME_MAY_CHANGE)


def test_a_setting_in_neither_list_must_match(tmp_path, monkeypatch):
    from omnimem_train.config import save_config

    ckpt = tmp_path / "checkpoint-1"
    save_config(load_config(RECIPE, [f"output_dir={tmp_path}", "memory.query_block=7", "max_steps=3"]), ckpt)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    monkeypatch.setattr(checkpoints, "RESUME_MUST_MATCH", tuple(k for k in checkpoints.RESUME_MUST_MATCH
                                                                if k != "memory"))
    with pytest.raises(ConfigError, match="memory.query_block: the checkpoint was trained with 7, this run asks "
                                          "for 256"):
        checkpoints.check_resume_config(ckpt, load_config(RECIPE, [f"output_dir={tmp_path}"]))
    notes = checkpoints.check_resume_config(ckpt, load_config(RECIPE, [f"output_dir={tmp_path}",
                                                                       "memory.query_block=7"]))
    assert notes == ["max_steps (3 -> 6)"]
