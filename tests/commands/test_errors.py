"""Every user-facing failure of the commands is one line `error: ...` (exit 2) without a traceback,
found before any model is loaded where the input alone shows it; Ctrl-C exits 130."""

import errno
import os

import pytest

from omnimem_train.commands.cli import main

INFER_RECIPE = "recipes/infer/tiny_omni.yaml"


@pytest.fixture
def no_model(monkeypatch):
    """Loading any model fails the test: the error must come first."""
    import omnimem_train.models.load
    import omnimem_train.serving

    def load(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(omnimem_train.models.load, "load_configured_adapter", load)
    monkeypatch.setattr(omnimem_train.serving, "load_configured_adapter", load)


def _error(argv, capsys, code=2) -> str:
    """The one stderr line of a failing command."""
    assert main(argv) == code
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


# --- output_dir: a file, or a folder that cannot be written -------------------------------------


def _bad_dirs(tmp_path):
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    return a_file


def test_output_dir_that_is_a_file_fails_before_the_model_loads(tmp_path, capsys, no_model):
    f = _bad_dirs(tmp_path)
    want = f"error: {f}: output_dir: exists and is not a folder"
    assert _error(["infer", f"output_dir={f}"], capsys) == want
    assert _error(["eval", "recipes/eval/tiny_omni.yaml", f"output_dir={f}"], capsys) == want
    assert _error(["calibrate", "recipes/calibrate/tiny_omni.yaml", f"output_dir={f}"], capsys) == want
    assert f.read_text() == "not a folder"


def test_calibration_output_folder_is_checked(tmp_path, capsys, no_model):
    f = _bad_dirs(tmp_path)
    assert _error(["calibrate", "recipes/calibrate/tiny_omni.yaml", f"output_dir={tmp_path / 'run'}",
                   f"calibration.output={f / 'budgets.json'}"], capsys) == \
        f"error: {f}: calibration.output: exists and is not a folder"


def test_pipeline_checks_every_stage_folder_first(tmp_path, capsys, no_model, monkeypatch):
    import data_prep.testbed

    monkeypatch.setattr(data_prep.testbed, "generate_testbed", lambda *a, **k: pytest.fail("testbed generated"))
    f = _bad_dirs(tmp_path)
    ok = [f"testbed.out={tmp_path / 'testbed'}", f"eval.overrides=[output_dir={tmp_path / 'eval'}]",
          f"tune.overrides=[output_dir={tmp_path / 'tuned'}]"]
    assert _error(["pipeline", "recipes/testbed/pipeline_small.yaml", *ok, f"testbed.out={f}"], capsys) == \
        f"error: {f}: testbed.out: exists and is not a folder"
    assert _error(["pipeline", "recipes/testbed/pipeline_small.yaml", *ok,
                   f"eval.overrides=[output_dir={f}]"], capsys) == \
        f"error: {f}: output_dir (eval stage): exists and is not a folder"
    assert _error(["pipeline", "recipes/testbed/pipeline_small.yaml", *ok,
                   f"tune.overrides=[output_dir={f}]"], capsys) == \
        f"error: {f}: output_dir (tune stage): exists and is not a folder"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_dir_fails_before_the_model_loads(tmp_path, capsys, no_model):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        for argv in (["infer"], ["eval", "recipes/eval/tiny_omni.yaml"],
                     ["calibrate", "recipes/calibrate/tiny_omni.yaml"]):
            assert _error([*argv, f"output_dir={ro}"], capsys) == \
                f"error: {ro}: output_dir: cannot write here (Permission denied)"
            assert _error([*argv, f"output_dir={ro / 'sub'}"], capsys) == \
                f"error: {ro / 'sub'}: output_dir: cannot write here (Permission denied)"
    finally:
        ro.chmod(0o700)


# --- infer's own arguments -----------------------------------------------------------------------


def test_more_options_than_letters_fails_before_the_model_loads(tmp_path, capsys, no_model):
    options = [f"o{i}" for i in range(11)]
    assert _error(["infer", "--options", *options, f"output_dir={tmp_path}"], capsys) == \
        "error: --options: 11 options, at most 10 (A-J)"
    assert _error(["infer", "--options", "red", " ", f"output_dir={tmp_path}"], capsys) == \
        "error: --options: option 2 is empty"


@pytest.mark.parametrize("question", ["", "   "])
def test_empty_question_fails_before_the_model_loads(tmp_path, capsys, no_model, question):
    assert _error(["infer", "--question", question, f"output_dir={tmp_path}"], capsys) == \
        "error: --question: empty; give the question to answer"


# --- keys named with where their value came from --------------------------------------------------


def test_unknown_deepspeed_name_names_the_override_and_key(tmp_path, capsys, no_model):
    err = _error(["train", "recipes/train/tiny_cpu.yaml", "deepspeed=zero9", f"output_dir={tmp_path}"], capsys)
    assert err.startswith("error: override 'deepspeed=zero9': key 'deepspeed': expected zero2 | zero3"), err
    assert err.endswith("got 'zero9'")


def test_unknown_scorer_names_the_override_and_key(tmp_path, capsys):
    err = _error(["infer", "memory.scorer=nope", f"output_dir={tmp_path}"], capsys)
    assert err.startswith("error: override 'memory.scorer=nope': key 'memory.scorer': unknown scorer 'nope'; "
                          "known: "), err


def test_unknown_scorer_in_a_recipe_names_the_recipe(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("memory:\n  scorer: nope\n  budget: 8\n")
    err = _error(["infer", str(recipe), f"output_dir={tmp_path}"], capsys)
    assert err.startswith(f"error: {recipe}: key 'memory.scorer': unknown scorer 'nope'"), err


def test_missing_budget_file_names_the_override_and_key(tmp_path, capsys):
    missing = tmp_path / "missing.json"
    err = _error(["infer", "memory.scorer=recency", "memory.budget=8", f"memory.budget_file={missing}",
                  f"output_dir={tmp_path}"], capsys)
    assert err == (f"error: override 'memory.budget_file={missing}': key 'memory.budget_file': {missing}: "
                   "budget file not found")


def test_empty_override_value_is_refused(tmp_path, capsys, no_model):
    assert _error(["infer", "memory.budget=", f"output_dir={tmp_path}"], capsys) == (
        "error: override 'memory.budget=': key 'memory.budget': expected int or null, got an empty value "
        "(write memory.budget=null for null)")


# --- the disk, and Ctrl-C --------------------------------------------------------------------


def _failing_eval(monkeypatch, exc):
    import omnimem_train.eval.grid

    def run_eval(cfg, *args, **kwargs):
        raise exc

    monkeypatch.setattr(omnimem_train.eval.grid, "run_eval", run_eval)


@pytest.mark.parametrize(("code", "problem"), [(errno.ENOSPC, "no space left on device"),
                                               (errno.EDQUOT, "disk quota exceeded"),
                                               (errno.EROFS, "read-only file system")])
def test_full_disk_is_one_line(tmp_path, capsys, monkeypatch, code, problem):
    target = tmp_path / "cells" / "full" / "predictions.jsonl"
    _failing_eval(monkeypatch, OSError(code, os.strerror(code), str(target)))
    assert _error(["eval", "recipes/eval/tiny_omni.yaml", f"output_dir={tmp_path}"], capsys) == \
        f"error: {target}: {problem}"


def test_full_disk_behind_a_library_error_is_one_line(tmp_path, capsys, monkeypatch):
    """A writer that wraps the OSError (torch.save raises RuntimeError) still names the disk."""
    target = tmp_path / "model.safetensors"
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
    except OSError as e:
        wrapped = RuntimeError("file write failed")
        wrapped.__cause__ = e
    _failing_eval(monkeypatch, wrapped)
    assert _error(["eval", "recipes/eval/tiny_omni.yaml", f"output_dir={tmp_path}"], capsys) == \
        f"error: {target}: no space left on device"
    _failing_eval(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert _error(["eval", "recipes/eval/tiny_omni.yaml", f"output_dir={tmp_path}"], capsys) == \
        "error: no space left on device"


def test_other_os_errors_keep_their_traceback(tmp_path, monkeypatch):
    _failing_eval(monkeypatch, OSError(errno.EIO, os.strerror(errno.EIO), "x"))
    with pytest.raises(OSError):
        main(["eval", "recipes/eval/tiny_omni.yaml", f"output_dir={tmp_path}"])


def test_ctrl_c_exits_130_with_one_line(tmp_path, capsys, monkeypatch):
    _failing_eval(monkeypatch, KeyboardInterrupt())
    assert _error(["eval", "recipes/eval/tiny_omni.yaml", f"output_dir={tmp_path}"], capsys, code=130) == \
        "interrupted"
