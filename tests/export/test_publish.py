"""Exports are atomic: a failure half-way (exception, Ctrl-C, failed verification, a full disk) leaves no
output folder and no temporary folder; --overwrite replaces only an earlier export, and only with a
verified new one; temporary folders of killed exports are cleaned up; published files get the modes
a plain write gets."""

import errno
import json
import os
import shutil
import time

import pytest
import safetensors
import torch
import transformers.modeling_utils
from safetensors.torch import save_file

import omnimem_train.export.run as export_run_module
from omnimem_train.commands.cli import main
from omnimem_train.errors import ConfigError
from omnimem_train.export import export_run
from omnimem_train.export.publish import staged_folder


def _boom(exc):
    def fail(*args, **kwargs):
        raise exc

    return fail


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failure_half_way_leaves_nothing(lora_run, tmp_path, monkeypatch, exc):
    out = tmp_path / "merged"
    with monkeypatch.context() as m:
        m.setattr(export_run_module, "_write_memory", _boom(exc))  # after the weights are written
        with pytest.raises(type(exc)):
            export_run(lora_run, out, log=lambda s: None)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    export_run(lora_run, out, log=lambda s: None)  # nothing in the way of a re-run
    assert (out / "omnimem_export.json").exists() and list(tmp_path.iterdir()) == [out]


def test_overwrite_keeps_old_export_when_new_one_fails_verification(lora_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "merged"
    assert main(["export", str(lora_run), "--output", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(export_run_module, "max_abs_diff", lambda a, b: 0.5)
    capsys.readouterr()
    assert main(["export", str(lora_run), "--output", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.rstrip().splitlines()[-1].startswith("error: ") and "Traceback" not in err
    assert "verification failed: max |logit difference| 0.5" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old export untouched
    assert list(tmp_path.iterdir()) == [out]


def test_overwrite_replaces_with_verified_export(lora_run, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "omnimem_export.json").write_text('{"method": "full"}')  # an earlier export
    (out / "stale.txt").write_text("old")
    export_run(lora_run, out, overwrite=True, log=lambda s: None)
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "omnimem_export.json").read_text())["method"] == "lora-merge"
    assert list(tmp_path.iterdir()) == [out]  # no .merged.old-* left


def test_staged_folder_publishes_only_on_success(tmp_path):
    out = tmp_path / "x"
    with pytest.raises(ValueError), staged_folder(out, overwrite=False) as tmp:
        (tmp / "f").write_text("half")
        assert tmp.parent == tmp_path and tmp.name.startswith(".x.tmp-")
        raise ValueError
    assert list(tmp_path.iterdir()) == []
    with staged_folder(out, overwrite=False) as tmp:
        (tmp / "f").write_text("done")
    assert (out / "f").read_text() == "done" and list(tmp_path.iterdir()) == [out]


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _aged(folder, seconds=3600):
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    os.utime(folder, (time.time() - seconds,) * 2)
    return folder


def test_overwrite_refuses_a_folder_that_is_not_an_export(lora_run, tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "manifest.jsonl").write_text('{"id": 1}\n')
    (out / "notes.txt").write_text("mine")
    for extra in (["--overwrite"], []):
        assert main(["export", str(lora_run), "--output", str(out), *extra]) == 2
        assert capsys.readouterr().err.strip() == (
            f"error: {out}: --output: exists and is not an omnimem-train export (no omnimem_export.json); "
            f"choose another folder or remove it yourself")
    assert {p.name: p.read_text() for p in out.iterdir()} == {"manifest.jsonl": '{"id": 1}\n',
                                                              "notes.txt": "mine"}
    assert list(tmp_path.iterdir()) == [out]


def test_stale_temp_folders_of_the_output_are_removed(tmp_path):
    out = tmp_path / "merged"
    stale = _aged(tmp_path / ".merged.tmp-0123abcd")
    others = [_aged(tmp_path / name) for name in (".merged.tmp-notes", ".merged2.tmp-0123abcd",
                                                  ".merged.old-0123abcd", ".cache")]
    logs = []
    with staged_folder(out, overwrite=False, log=logs.append) as tmp:
        (tmp / "f").write_text("done")
    assert logs == [f"clean:  removed {stale} (left by an interrupted export)"]
    assert sorted(tmp_path.iterdir()) == sorted([out, *others])


def test_temp_folder_of_a_running_export_is_kept(tmp_path):
    out = tmp_path / "merged"
    logs = []
    with pytest.raises(ConfigError, match="output already exists"), \
            staged_folder(out, overwrite=False, log=logs.append) as first:
        os.utime(first, (time.time() - 3600,) * 2)  # older than the second export, but still being written
        with staged_folder(out, overwrite=False, log=logs.append) as second:
            assert first.exists() and second != first
            (second / "omnimem_export.json").write_text("{}")
        assert first.exists() and logs == []
    assert list(tmp_path.iterdir()) == [out]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_staged_folder_publishes_umask_modes(tmp_path, umask):
    out = tmp_path / "x"
    old = os.umask(umask)
    try:
        with staged_folder(out, overwrite=False) as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))  # written 0600 by safetensors
            (tmp / "sub").mkdir()
            (tmp / "sub" / "notes.txt").write_text("x")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    assert modes == {"x": 0o777 & ~umask, "sub": 0o777 & ~umask,
                     "model.safetensors": 0o666 & ~umask, "notes.txt": 0o666 & ~umask}


def test_export_gets_plain_modes_and_cleans_stale_temp_folders(lora_run, tmp_path, capsys, umask022):
    out = tmp_path / "merged"
    stale = _aged(tmp_path / ".merged.tmp-0123abcd")
    assert main(["export", str(lora_run), "--output", str(out)]) == 0
    assert f"clean:  removed {stale} (left by an interrupted export)" in capsys.readouterr().out
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in [out, *out.rglob("*")]}
    assert modes["model.safetensors"] == modes["config.json"] == oct(0o644)
    assert modes == {p.name: oct(0o755 if p.is_dir() else 0o644) for p in [out, *out.rglob("*")]}
    assert list(tmp_path.iterdir()) == [out]


@pytest.mark.parametrize("where", ["weights", "copied files"])
def test_full_disk_is_one_line_and_leaves_nothing(lora_run, tmp_path, monkeypatch, capsys, where):
    out = tmp_path / "merged"
    if where == "weights":  # what safetensors raises when its write fails with ENOSPC
        def fill(tensors, filename, metadata=None):
            with open(filename, "wb") as f:
                f.write(b"\0" * 4096)
            raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device "
                                              "(os error 28)")

        monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", fill)
    else:
        def fill(src, dst, **kwargs):
            with open(dst, "wb") as f:
                f.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

        monkeypatch.setattr(shutil, "copyfile", fill)
    assert main(["export", str(lora_run), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]) and "Traceback" not in err, err
    assert lines[0].startswith(f"error: {out}: export: no space left on device (")
    assert list(tmp_path.iterdir()) == []
