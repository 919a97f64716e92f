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

from omnimem_train.memory.budgets import Budgets, EqualBytes
from omnimem_train.memory.context import LayerContext
from omnimem_train.memory.layer_memory import LayerMemory, TokenBytes, TokenShape
from omnimem_train.models.base import StreamPiece


class MemoryPolicy(ABC):
    name: str = "base"
    per_head: bool = False  # every KV head keeps its own tokens (bookkeeping and extras once per head)

    def new_token_extras(self, hidden_new: torch.Tensor) -> dict[str, torch.Tensor]:
        """hidden_new (n_new, D) -> per-token state for the group's tokens (same keys every call; no
        side effects: `token_bytes` probes it)."""
        return {}

    def token_bytes(self, shape: TokenShape) -> TokenBytes:
        """Bytes one retained token costs under this policy at one layer: K/V, bookkeeping and the
        per-token state `new_token_extras` declares (probed with one zero hidden state of
        `shape.hidden_size`). A policy that keeps per-token state elsewhere overrides this."""
        probe = torch.zeros(1, shape.hidden_size, dtype=shape.dtype)
        return shape.token_bytes(self.new_token_extras(probe), self.per_head)

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
        if self.template.fraction is None:
            raise ValueError("set_fraction needs a budget_fraction budget")
        self.template = dataclasses.replace(self.template, fraction=fraction)

    def at_equal_bytes(self, shape: TokenShape) -> EqualBytes:
        """From now on keep, per stream, as many tokens as fit the retained bytes of a method keeping
        K/V only at the configured token budget (`Budgets.at_equal_bytes`; `eval.budget_axis:
        bytes`). -> the per-token costs used."""
        costs = EqualBytes(shape.token_bytes().total, self.token_bytes(shape).total)
        self.template = self.budgets = self.template.at_equal_bytes(costs)
        return costs
