"""Exports are atomic: a failure half-way (exception, Ctrl-C, failed verification) leaves no output
folder and no temporary folder; --overwrite replaces an old export only with a verified new one."""

import json

import pytest

import omnimem_train.export.run as export_run_module
from omnimem_train.commands.cli import main
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
