"""key_norm: KnormPress: low key norm ≈ high attention, so keep the smallest norms (mean over KV heads)."""

from __future__ import annotations

from omnimem_train.memory.scorers.base import Scorer, register_scorer


@register_scorer("key_norm")
class KeyNormScorer(Scorer):
    """KnormPress: low key norm ≈ high attention, so keep the smallest norms (mean over KV heads)."""

    def score(self, ctx):
        return -ctx.cand.keys[0].float().norm(dim=-1).mean(0)
