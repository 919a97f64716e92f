"""A scorer under budgets: score [memory ; group], keep the top per modality (or pooled), all text.

This is the wrapper that makes every scorer usable with modality-aware or modality-blind budgets
(the ablation the paper needs): the scorer only scores, the budgets only count.
"""

from omnimem_train.memory.budgets import Budgets
from omnimem_train.memory.policy import MemoryPolicy
from omnimem_train.memory.scorers.base import Scorer
from omnimem_train.memory.selection import select


class ScoredPolicy(MemoryPolicy):
    def __init__(self, scorer: Scorer, budgets: Budgets):
        self.scorer, self.budgets = scorer, budgets
        self.name = scorer.name

    def new_token_extras(self, hidden_new):
        return self.scorer.new_token_extras(hidden_new)

    def update(self, ctx):
        # Score even when everything fits: stateful scorers (running attention) must see every group.
        scores = self.scorer.score(ctx)
        keep = select(scores, ctx.cand.modality, self.budgets.limits(ctx.layer_idx, ctx.seen))
        return ctx.cand if keep is None else ctx.cand.take(keep)

    def describe(self):
        b = self.budgets
        kind = "aware" if b.modality_aware else "blind"
        if b.per_layer is not None:
            sizes = {a + v for a, v in b.per_layer}
            size = f"{sizes.pop()}/layer" if len(sizes) == 1 else "per-layer file"
        elif b.keep_fraction is not None:
            size = f"keep {b.keep_fraction:.0%}"
        else:
            size = "unlimited"
        return f"{self.scorer.describe()}, {size}, modality-{kind}"
