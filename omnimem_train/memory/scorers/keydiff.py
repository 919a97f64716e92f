"""keydiff: KeyDiff (kvpress KeyDiffPress): keep keys far from the anchor, the mean of the
L2-normalised candidate keys (low cosine to it), averaged over KV heads."""

from __future__ import annotations

import dataclasses

import torch

from omnimem_train.memory.scorers.base import Scorer, register_scorer


@register_scorer("keydiff")
@dataclasses.dataclass
class KeyDiffScorer(Scorer):
    """KeyDiff: keep keys far from the mean normalised key (low cosine to the anchor), averaged over KV
    heads (or per KV head with memory.per_head, each head against the mean of its own candidates)."""

    supports_per_head = True

    def score(self, ctx):
        keys = ctx.cand.keys[0].float()  # (G, n, d)
        # As kvpress: the anchor averages directions, so a few long keys do not dominate it.
        anchor = torch.nn.functional.normalize(keys, dim=-1).mean(dim=1, keepdim=True)
        cos = torch.nn.functional.cosine_similarity(keys, anchor, dim=-1)  # (G, n)
        return -cos if self.per_head else -cos.mean(0)
