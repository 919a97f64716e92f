"""The memory-policy interface the streaming engine calls (one policy per stream).

Per group, at every layer, the engine (1) asks `new_token_extras` for the per-token state the
group's tokens must carry, (2) appends the group to the layer's memory, and (3) when evicting,
calls `update`, which returns the layer's new memory. `filter_stream` may drop stream tokens
before they reach the model at all (frame dropping).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterable

import torch

from omnimem_train.memory.budgets import Budgets
from omnimem_train.memory.context import LayerContext
from omnimem_train.memory.layer_memory import LayerMemory
from omnimem_train.models.base import StreamPiece


class MemoryPolicy(ABC):
    name: str = "base"

    def new_token_extras(self, hidden_new: torch.Tensor) -> dict[str, torch.Tensor]:
        """hidden_new (n_new, D) -> per-token state for the group's tokens (same keys every call)."""
        return {}

    @abstractmethod
    def update(self, ctx: LayerContext) -> LayerMemory:
        """The layer's memory after this group: a subset of ctx.cand, text always included."""

    def filter_stream(self, pieces: Iterable[StreamPiece]) -> Iterable[StreamPiece]:
        return pieces

    needs_counts: bool = False  # must `expect` get the stream's exact counts (a budget_fraction budget)?

    def expect(self, tokens: dict) -> None:
        """Told before a stream how many audio/visual tokens it will hold: exact when `needs_counts`
        (the engine then materialises the stream to count it), else an estimate; most ignore it."""
        return None

    def describe(self) -> str:
        return self.name


class BudgetedPolicy(MemoryPolicy):
    """A policy under `Budgets`: a template that may depend on the stream (budget_fraction), made
    concrete for each stream by `expect` with the stream's exact token counts."""

    def __init__(self, budgets: Budgets):
        self.template = self.budgets = budgets

    @property
    def needs_counts(self) -> bool:
        return self.template.needs_counts

    def expect(self, tokens: dict) -> None:
        self.budgets = self.template.for_stream(tokens)

    def set_fraction(self, fraction: float) -> None:
        """Resolve later streams at another budget_fraction (training with a sampled budget)."""
        if not self.template.needs_counts:
            raise ValueError("set_fraction needs a budget_fraction budget")
        self.template = dataclasses.replace(self.template, fraction=fraction)
