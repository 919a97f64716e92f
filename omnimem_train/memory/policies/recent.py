"""Keep the most recent N audio/visual tokens per layer (plus all text): a sliding window.

The trivial policy that exercises eviction end to end; issue 3's scorers replace it for real use.
"""

import torch

from omnimem_train.memory.policy import MemoryPolicy, text_mask
from omnimem_train.memory.registry import register_policy


@register_policy("recent")
class RecentMemory(MemoryPolicy):
    def __init__(self, budget: int | None = None):
        if budget is not None and budget < 0:
            raise ValueError(f"memory.budget must be >= 0, got {budget}")
        self.budget = budget

    def select(self, layer_idx, cand, n_new):
        is_text = text_mask(cand)
        media = (~is_text).nonzero().squeeze(1)
        if self.budget is None or media.numel() <= self.budget:
            return None
        keep_media = media[media.numel() - self.budget :]
        keep = torch.cat([is_text.nonzero().squeeze(1), keep_media])
        return keep.sort().values

    def describe(self):
        return f"recent(budget={self.budget})"
