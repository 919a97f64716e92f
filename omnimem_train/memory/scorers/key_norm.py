"""key_norm: KnormPress: low key norm ≈ high attention, so keep the smallest norms (mean over KV heads,
or per KV head with memory.per_head, as KnormPress selects)."""

from __future__ import annotations

import dataclasses

from omnimem_train.memory.scorers.base import Scorer, register_scorer


@register_scorer("key_norm")
@dataclasses.dataclass
class KeyNormScorer(Scorer):
    """KnormPress: low key norm ≈ high attention, so keep the smallest norms (mean over KV heads)."""

    supports_per_head = True

    def score(self, ctx):
        norms = ctx.cand.keys[0].float().norm(dim=-1)  # (G, n)
        return -norms if self.per_head else -norms.mean(0)
