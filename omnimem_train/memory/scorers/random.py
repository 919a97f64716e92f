"""random: Random eviction (seeded, so runs are reproducible)."""

from __future__ import annotations

import dataclasses

import torch

from omnimem_train.memory.scorers.base import Scorer, register_scorer


@register_scorer("random")
@dataclasses.dataclass
class RandomScorer(Scorer):
    """Random eviction (seeded, so runs are reproducible)."""

    seed: int = 0
    generator: torch.Generator = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self.generator = torch.Generator().manual_seed(self.seed)


    def score(self, ctx):
        return torch.rand(ctx.cand.n, generator=self.generator).to(ctx.cand.keys.device)
