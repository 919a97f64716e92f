"""Atomic export folders: build in a hidden temporary sibling, publish with renames.

    with staged_folder(out, overwrite) as tmp:   # tmp = <parent>/.<name>.tmp-<random>
        ...write and verify into tmp...
    # on normal exit: tmp -> out (with overwrite: out -> .<name>.old-<random>, tmp -> out, old deleted)
    # on any exception, KeyboardInterrupt included: tmp is deleted, out is untouched

A reader therefore sees either the old export or the new, complete one, never a half-written folder.
A process killed outright (SIGKILL) can leave a `.<name>.tmp-*` folder behind; its hidden name and its
missing `omnimem_export.json` (written last) mark it as incomplete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from omnimem_train.errors import ConfigError


def check_output(output: Path, source: Path, overwrite: bool) -> None:
    """Refuse before any work: an existing output without `overwrite`, or an output that would
    replace the source folder itself."""
    out, src = output.resolve(), source.resolve()
    if out == src or out in src.parents:
        raise ConfigError(f"{output}: the output folder would replace the source {source}; choose another --output")
    if output.exists() and not overwrite:
        raise ConfigError(f"{output}: output already exists (pass --overwrite to replace it)")
    if output.exists() and not output.is_dir():
        raise ConfigError(f"{output}: exists and is not a folder")


@contextlib.contextmanager
def staged_folder(output: Path, overwrite: bool) -> Iterator[Path]:
    """Yield an empty temporary folder next to `output`; publish it as `output` when the block ends."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()  # umask-derived mode, unlike mkdtemp's 0700
    try:
        yield tmp
        _publish(tmp, output, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, output: Path, overwrite: bool) -> None:
    if not output.exists():
        try:
            os.rename(tmp, output)
        except OSError as e:  # another process published first
            raise ConfigError(f"{output}: cannot publish the export ({e.strerror})") from e
        return
    if not overwrite:
        raise ConfigError(f"{output}: output already exists (pass --overwrite to replace it)")
    old = output.with_name(f".{output.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(output, old)
    try:
        os.rename(tmp, output)
    except BaseException:
        os.rename(old, output)  # put the previous export back
        raise
    shutil.rmtree(old, ignore_errors=True)
