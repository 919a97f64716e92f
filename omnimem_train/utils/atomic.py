"""Atomic file writes: write a temp file in the target's folder, then rename it over the target,
so a reader (or a crash) never sees a half-written manifest, config, budget file or plot."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` creates the content at `tmp`; it then replaces `path` in one rename.

    The temp name is unique per process and call, in the same folder (so the rename is atomic),
    and the file gets the mode a plain write gets (`plain_modes`), whatever `write` used."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        write(tmp)
        plain_modes(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)


def plain_modes(path: str | Path) -> None:
    """Give `path`, and for a folder everything under it, the mode a plain `open`/`mkdir` gets under
    the process umask (0666/0777 minus the umask; e.g. 0644/0755 with umask 022). Some writers
    create files 0600 (safetensors' `save_file`, `tempfile.mkstemp`), and a rename keeps that.
    Symbolic links are left alone."""
    mask = os.umask(0o077)  # reading the umask means setting one: a private one, for an instant
    os.umask(mask)
    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask
    if not os.path.isdir(path):
        os.chmod(path, file_mode)
        return
    os.chmod(path, dir_mode)
    for root, dirs, files in os.walk(path):
        for names, mode in ((dirs, dir_mode), (files, file_mode)):
            for name in names:
                if not os.path.islink(p := os.path.join(root, name)):
                    os.chmod(p, mode)
