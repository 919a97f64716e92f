"""Memory policies by name, so a recipe can say `memory.policy: recent`."""

from __future__ import annotations

from collections.abc import Callable

from omnimem_train.errors import ConfigError
from omnimem_train.memory.policy import MemoryPolicy

_POLICIES: dict[str, Callable[..., MemoryPolicy]] = {}


def register_policy(name: str):
    """Class decorator: make a policy constructible by `build_policy(name, ...)`."""

    def deco(cls):
        if name in _POLICIES:
            raise ValueError(f"memory policy {name!r} registered twice")
        cls.name = name
        _POLICIES[name] = cls
        return cls

    return deco


def known_policies() -> list[str]:
    _load_builtin()
    return sorted(_POLICIES)


def build_policy(name: str, **kwargs) -> MemoryPolicy:
    """An instance of the policy registered as `name`; unknown names list the known ones."""
    _load_builtin()
    if name not in _POLICIES:
        raise ConfigError(f"memory.policy: unknown policy {name!r}; known: {', '.join(sorted(_POLICIES))}")
    return _POLICIES[name](**kwargs)


def _load_builtin() -> None:
    # Importing the package registers the shipped policies (kept out of module import time
    # to avoid a cycle: policies import this module).
    import omnimem_train.memory.policies  # noqa: F401
