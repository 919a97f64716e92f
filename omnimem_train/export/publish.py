"""Atomic export folders: build in a hidden temporary sibling, publish with renames.

    with staged_folder(out, overwrite) as tmp:   # tmp = <parent>/.<name>.tmp-<8 hex digits>
        ...write and verify into tmp...
    # on normal exit: tmp -> out (with overwrite: out -> .<name>.old-<random>, tmp -> out, old deleted)
    # on any exception, KeyboardInterrupt included: tmp is deleted, out is untouched

A reader therefore sees either the old export or the new, complete one, never a half-written folder.
Only an earlier export (a folder holding `omnimem_export.json`, which the export writes last) is ever
replaced. Published files and folders get the modes a plain write gets under the process umask. A full
disk is one ConfigError naming the output. A process killed outright (SIGKILL) leaves its
`.<name>.tmp-*` folder behind; the next export to the same output removes it, and logs it. A running
export holds a shared flock on its folder, so a concurrent export to the same output never takes it
(where the filesystem has no flock, the folder's age alone decides).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from omnimem_train.errors import ConfigError, disk_problem
from omnimem_train.utils.atomic import plain_modes

EXPORT_FILE = "omnimem_export.json"  # the export record; its presence marks a folder as an export


def check_output(output: Path, source: Path, overwrite: bool) -> None:
    """Refuse before any work: an output that would replace the source folder itself, an existing
    folder that is not an earlier export, or an earlier export without `overwrite`."""
    out, src = output.resolve(), source.resolve()
    if out == src or out in src.parents:
        raise ConfigError(f"{output}: the output folder would replace the source {source}; choose another --output")
    _check_existing(output, overwrite)


def _check_existing(output: Path, overwrite: bool) -> None:
    if not output.exists():
        return
    if not output.is_dir():
        raise ConfigError(f"{output}: exists and is not a folder")
    if not (output / EXPORT_FILE).is_file():
        raise ConfigError(f"{output}: --output: exists and is not an omnimem-train export "
                          f"(no {EXPORT_FILE}); choose another folder or remove it yourself")
    if not overwrite:
        raise ConfigError(f"{output}: output already exists (pass --overwrite to replace it)")


@contextlib.contextmanager
def staged_folder(output: Path, overwrite: bool, log: Callable[[str], None] = print) -> Iterator[Path]:
    """Yield an empty temporary folder next to `output`; publish it as `output` when the block ends.
    Temporary folders that killed exports to `output` left behind are removed first."""
    output.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(output, log)
    tmp = output.with_name(f".{output.name}.tmp-{uuid.uuid4().hex[:8]}")
    lock = -1
    try:
        tmp.mkdir()  # umask-derived mode, unlike mkdtemp's 0700
        lock = os.open(tmp, os.O_RDONLY)
        with contextlib.suppress(OSError):  # "in use" for `_held`; released on close or when the process dies
            fcntl.flock(lock, fcntl.LOCK_SH)
        yield tmp
        plain_modes(tmp)
        _publish(tmp, output, overwrite)
    except BaseException as e:
        written = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()) if tmp.is_dir() else 0
        shutil.rmtree(tmp, ignore_errors=True)
        if disk_problem(e):
            from tqdm import tqdm

            raise ConfigError(f"{output}: export: no space left on device (the disk holding {output.parent} "
                              f"filled after {tqdm.format_sizeof(written, 'B')} of the export; the partial "
                              f"export was removed)") from e
        raise
    finally:
        if lock >= 0:
            os.close(lock)


def _remove_stale(output: Path, log: Callable[[str], None]) -> None:
    """Remove `.<name>.tmp-<8 hex digits>` folders next to `output` that are older than now and not
    held by a running export; nothing else is touched."""
    pattern = re.compile(rf"\.{re.escape(output.name)}\.tmp-[0-9a-f]{{8}}")
    now = time.time()
    for p in sorted(output.parent.iterdir()):
        if not pattern.fullmatch(p.name) or p.is_symlink() or not p.is_dir() or p.stat().st_mtime >= now:
            continue
        try:
            if _held(p):
                continue
            shutil.rmtree(p)
        except OSError as e:
            log(f"note:   cannot remove {p}, left by an interrupted export ({e.strerror})")
        else:
            log(f"clean:  removed {p} (left by an interrupted export)")


def _held(folder: Path) -> bool:
    """Whether a running export holds its flock on `folder` (False where the filesystem has no flock)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _publish(tmp: Path, output: Path, overwrite: bool) -> None:
    if not output.exists():
        try:
            os.rename(tmp, output)
        except OSError as e:  # another process published first
            raise ConfigError(f"{output}: cannot publish the export ({e.strerror})") from e
        return
    _check_existing(output, overwrite)  # it appeared, or changed, while this export was built
    old = output.with_name(f".{output.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(output, old)
    try:
        os.rename(tmp, output)
    except BaseException:
        os.rename(old, output)  # put the previous export back
        raise
    shutil.rmtree(old, ignore_errors=True)
