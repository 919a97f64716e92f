"""value_norm: InfiniPot-V VaN / VATP style: keep the tokens with the largest value norms."""

from __future__ import annotations

from omnimem_train.memory.scorers.base import Scorer, register_scorer


@register_scorer("value_norm")
class ValueNormScorer(Scorer):
    """InfiniPot-V VaN / VATP style: keep the tokens with the largest value norms."""

    def score(self, ctx):
        return ctx.cand.values[0].float().norm(dim=-1).mean(0)
