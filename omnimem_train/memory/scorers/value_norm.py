"""value_norm: InfiniPot-V VaN / VATP style: keep the tokens with the largest value norms."""

from __future__ import annotations

import dataclasses

from omnimem_train.memory.scorers.base import Scorer, register_scorer


@register_scorer("value_norm")
@dataclasses.dataclass
class ValueNormScorer(Scorer):
    """InfiniPot-V VaN / VATP style: keep the tokens with the largest value norms (mean over KV heads,
    or per KV head with memory.per_head, as InfiniPot-V's VaN selects)."""

    supports_per_head = True

    def score(self, ctx):
        norms = ctx.cand.values[0].float().norm(dim=-1)  # (G, n)
        return norms if self.per_head else norms.mean(0)
