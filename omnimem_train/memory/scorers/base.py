"""The scorer interface and registry: one small dataclass per method (its fields are its
hyper-parameters, as a kvpress press), one `score` per layer."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from omnimem_train.memory.context import LayerContext

SCORERS: dict[str, type[Scorer]] = {}


@dataclasses.dataclass
class Scorer(ABC):
    """Scores the candidates [memory ; group] of one layer: higher = more worth keeping.

    A scorer that needs per-token state (hidden states, running attention) names it in `extras`
    and provides its initial value for new tokens in `new_token_extras`; the state then travels
    with each token through selection.

    A scorer whose reference selects per KV head sets `supports_per_head`; built with
    `memory.per_head` its `per_head` is set and `score` returns one row of scores per KV head. The
    candidates are then in the per-head layout (`LayerMemory.by_head`): slot i of head g is head g's
    own token, and per-token extras are (G, n, ...).

    A subclass is a dataclass whose init fields are its hyper-parameters; `from_config` fills each
    from the `MemoryConfig` field of the same name (a field the config lacks keeps its default).
    """

    name: ClassVar[str] = "base"
    supports_per_head: ClassVar[bool] = False  # has a per-KV-head score (memory.per_head may be set)
    per_head: bool = dataclasses.field(default=False, kw_only=True)  # score per KV head: (G, n), not (n,)

    @classmethod
    def from_config(cls, cfg) -> Scorer:
        """Build from a `MemoryConfig`: the method's fields of the same name, and `per_head` (the
        registry has refused it for scorers without a per-head score)."""
        params = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)
                  if f.init and f.name != "per_head" and hasattr(cfg, f.name)}
        return cls(**params, per_head=bool(cfg.per_head))

    def new_token_extras(self, hidden_new: torch.Tensor) -> dict[str, torch.Tensor]:
        """hidden_new (n_new, D) -> per-token state to store for the new tokens."""
        return {}

    @abstractmethod
    def score(self, ctx: LayerContext) -> torch.Tensor:
        """-> (n,) float scores over ctx.cand, or (G, n) when `per_head` (may update ctx.cand.extras
        in place)."""

    def describe(self) -> str:
        return self.name


def register_scorer(name: str):
    def deco(cls):
        if name in SCORERS:
            raise ValueError(f"scorer {name!r} registered twice")
        cls.name = name
        SCORERS[name] = cls
        return cls

    return deco
