"""A scorer under budgets: score [memory ; group], keep the top per modality (or pooled), all text.

This is the wrapper that makes every scorer usable with modality-aware or modality-blind budgets
(the ablation the paper needs): the scorer only scores, the budgets only count. With
`memory.per_head` every KV head keeps its own top tokens (`select_per_head`).
"""

import dataclasses

from omnimem_train.memory.budgets import Budgets
from omnimem_train.memory.policy import BudgetedPolicy
from omnimem_train.memory.scorers.base import Scorer
from omnimem_train.memory.selection import select, select_per_head


class ScoredPolicy(BudgetedPolicy):
    def __init__(self, scorer: Scorer, budgets: Budgets):
        super().__init__(budgets)
        self.scorer = scorer
        self.name = scorer.name

    @property
    def per_head(self) -> bool:
        return self.scorer.per_head

    def new_token_extras(self, hidden_new):
        return self.scorer.new_token_extras(hidden_new)

    def update(self, ctx):
        if self.scorer.per_head:
            return self._update_per_head(ctx)
        # Score even when everything fits: stateful scorers (running attention) must see every group.
        scores = self.scorer.score(ctx)
        keep = select(scores, ctx.cand.modality, self.budgets.limits(ctx.layer_idx, ctx.seen))
        return ctx.cand if keep is None else ctx.cand.take(keep)

    def _update_per_head(self, ctx):
        """(G, n) scores -> each head's own top-k. The candidates are viewed per head first (the
        first group's are shared), so the scorer's per-token state is (G, n, ...) from the start and
        the memory stays per head even when nothing is evicted."""
        ctx = dataclasses.replace(ctx, cand=ctx.cand.by_head())
        scores = self.scorer.score(ctx)
        keep = select_per_head(scores, ctx.cand.modality, self.budgets.limits(ctx.layer_idx, ctx.seen))
        return ctx.cand if keep is None else ctx.cand.take(keep)

    def describe(self):
        b = self.budgets
        kind = "aware" if b.modality_aware else "blind"
        if b.fraction is not None:
            size = f"{b.fraction:g} of the stream/layer" + ("" if b.profile is None else " (per-layer profile)")
        elif b.per_layer is not None:
            sizes = {a + v for a, v in b.per_layer}
            size = f"{sizes.pop()}/layer" if len(sizes) == 1 else "per-layer file"
        elif b.keep_fraction is not None:
            size = f"keep {b.keep_fraction:.0%}"
        elif b.size is not None:
            size = f"{b.size}/layer"
        else:
            size = "unlimited"
        if b.equal_bytes is not None:
            size += f" at equal bytes ({b.equal_bytes.method} vs {b.equal_bytes.reference} bytes/token)"
        return f"{self.scorer.describe()}, {size}, modality-{kind}" + (", per KV head" if self.scorer.per_head else "")
