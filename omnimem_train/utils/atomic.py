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
    and the file gets the usual umask-derived mode (unlike `tempfile.mkstemp`'s 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        write(tmp)
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
