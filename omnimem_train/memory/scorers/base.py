"""The scorer interface and registry: one small class per method, one `score` per layer."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from omnimem_train.errors import ConfigError
from omnimem_train.memory.context import LayerContext

_SCORERS: dict[str, type[Scorer]] = {}


class Scorer(ABC):
    """Scores the candidates [memory ; group] of one layer: higher = more worth keeping.

    A scorer that needs per-token state (hidden states, running attention) names it in `extras`
    and provides its initial value for new tokens in `new_token_extras`; the state then travels
    with each token through selection.
    """

    name: str = "base"

    @classmethod
    def from_config(cls, cfg) -> Scorer:
        """Build from a `MemoryConfig` (only the fields the method uses)."""
        return cls()

    def new_token_extras(self, hidden_new: torch.Tensor) -> dict[str, torch.Tensor]:
        """hidden_new (n_new, D) -> per-token state to store for the new tokens."""
        return {}

    @abstractmethod
    def score(self, ctx: LayerContext) -> torch.Tensor:
        """-> (n,) float scores over ctx.cand (may update ctx.cand.extras in place)."""

    def describe(self) -> str:
        return self.name


def register_scorer(name: str):
    def deco(cls):
        if name in _SCORERS:
            raise ValueError(f"scorer {name!r} registered twice")
        cls.name = name
        _SCORERS[name] = cls
        return cls

    return deco


def scorer_names() -> list[str]:
    import omnimem_train.memory.scorers  # noqa: F401  (registers the shipped scorers)

    return sorted(_SCORERS)


def build_scorer(name: str, cfg) -> Scorer:
    names = scorer_names()
    if name not in _SCORERS:
        raise ConfigError(f"memory.scorer: unknown scorer {name!r}; known: {', '.join(names)}")
    return _SCORERS[name].from_config(cfg)
