"""Output folders checked before any model is loaded, so a bad `output_dir` costs no load time."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from omnimem_train.errors import ConfigError


def check_writable_dir(path: str | Path, field: str = "output_dir") -> None:
    """`path` is (or can be created as) a folder this process can write into; otherwise a one-line
    ConfigError naming the path and the config field. Creates the folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path}: {field}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{path}: {field}: cannot write here ({e.strerror or e})") from None
