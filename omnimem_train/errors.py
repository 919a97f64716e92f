"""User-facing errors.

Every problem caused by user input (a file, a config key, a model folder) raises a subclass of
`OmniMemError` whose message is one line naming the file/field and the problem. The CLI prints
it as `error: <message>` and exits with status 2, without a traceback.
"""


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
