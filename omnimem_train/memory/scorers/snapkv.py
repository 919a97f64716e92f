"""snapkv: SnapKV: per-head attention of the group's last `window` queries, averaged, then pooled over"""

from __future__ import annotations

import torch

from omnimem_train.memory.attention import window_attention
from omnimem_train.memory.scorers.base import Scorer, register_scorer


@register_scorer("snapkv")
class SnapKVScorer(Scorer):
    """SnapKV: per-head attention of the group's last `window` queries, averaged, then pooled over
    neighbouring tokens (kernel 5) so clusters survive together."""

    def __init__(self, window: int = 32, kernel: int = 5):
        self.window, self.kernel = window, kernel

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg.window)

    def score(self, ctx):
        att = window_attention(ctx.queries().detach(), ctx.cand.keys.detach(), ctx.n_old, self.window)
        pooled = torch.nn.functional.avg_pool1d(att[None, None], self.kernel, stride=1, padding=self.kernel // 2,
                                                count_include_pad=False)
        return pooled[0, 0, : att.numel()]
