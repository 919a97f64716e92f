"""random: Random eviction (seeded, so runs are reproducible)."""

from __future__ import annotations

import torch

from omnimem_train.memory.scorers.base import Scorer, register_scorer


@register_scorer("random")
class RandomScorer(Scorer):
    """Random eviction (seeded, so runs are reproducible)."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg.seed)

    def score(self, ctx):
        return torch.rand(ctx.cand.n, generator=self.generator).to(ctx.cand.keys.device)
