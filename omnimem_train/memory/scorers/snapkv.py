"""snapkv: SnapKV: per-head attention of the group's last `window` queries, averaged, then pooled over"""

from __future__ import annotations

import dataclasses

import torch

from omnimem_train.memory.attention import window_attention
from omnimem_train.memory.scorers.base import Scorer, register_scorer


@register_scorer("snapkv")
@dataclasses.dataclass
class SnapKVScorer(Scorer):
    """SnapKV: per-head attention of the group's last `window` queries, averaged, then pooled over
    neighbouring tokens (kernel 5) so clusters survive together. With memory.per_head (SnapKV's own
    rule) each KV head averages only its query heads and pools over its own retained neighbours."""

    supports_per_head = True

    window: int = 32  # memory.window: the group's last queries that vote
    kernel: int = 5  # pooling width (no config key: SnapKV's default)


    def score(self, ctx):
        att = window_attention(ctx.queries().detach(), ctx.cand.keys.detach(), ctx.n_old, self.window,
                               per_head=self.per_head)  # (n,) or (G, n)
        n = att.shape[-1]
        pooled = torch.nn.functional.avg_pool1d(att.view(-1, 1, n), self.kernel, stride=1, padding=self.kernel // 2,
                                                count_include_pad=False)  # one row per head: (1 or G, 1, n)
        return pooled[:, 0, :n].view(att.shape)
