"""`check_writable_dir`: an output folder that is a file, or cannot be written, is a one-line
ConfigError naming the path and the config field; a missing one is created."""

import os
import tempfile

import pytest

from omnimem_train.errors import ConfigError
from omnimem_train.utils.paths import check_writable_dir


def _error(path, field="output_dir") -> str:
    with pytest.raises(ConfigError) as info:
        check_writable_dir(path, field)
    return str(info.value)


def test_missing_folder_is_created(tmp_path):
    check_writable_dir(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []


def test_a_file_is_not_a_folder(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    assert _error(f) == f"{f}: output_dir: exists and is not a folder"
    assert _error(f / "sub", "eval.output") == f"{f / 'sub'}: eval.output: cannot write here (Not a directory)"
    assert f.read_text() == "x"


def test_a_folder_that_refuses_writes(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert _error(tmp_path) == f"{tmp_path}: output_dir: cannot write here (Permission denied)"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert _error(ro) == f"{ro}: output_dir: cannot write here (Permission denied)"
        assert _error(ro / "sub") == f"{ro / 'sub'}: output_dir: cannot write here (Permission denied)"
    finally:
        ro.chmod(0o700)
