"""User-facing errors.

Every problem caused by user input (a file, a config key, a model folder) raises a subclass of
`OmniMemError` whose message is one line naming the file/field and the problem. The CLI prints
it as `error: <message>` and exits with status 2, without a traceback.
"""

import errno
import os


class OmniMemError(Exception):
    """Base class: a one-line, user-facing problem with the input."""


class ConfigError(OmniMemError):
    """A recipe, override or config value is invalid (names the file and key)."""


class MediaError(OmniMemError):
    """A media file is missing, unreadable, empty or lacks a required stream (names the file)."""


class ModelError(OmniMemError):
    """A model directory or name cannot be loaded (names the path)."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (library errors can span many lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


# A write that failed for want of room is the disk's problem, not a bug: callers report it in one line.
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
_NO_SPACE = "No space left on device"  # writers without an errno (safetensors, torch.save) say it in words


def disk_problem(exc: BaseException | None) -> tuple[str, str | None] | None:
    """(problem, path or None) when `exc`, or an exception it was raised from or while handling, says
    the disk is full, over quota or read-only; None otherwise."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
            text = os.strerror(exc.errno)
            return text[:1].lower() + text[1:], exc.filename or exc.filename2
        if _NO_SPACE in str(exc):
            return "no space left on device", None
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
