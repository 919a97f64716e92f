"""Top-k selection under per-modality (or pooled) limits; text always kept; temporal order kept."""

from __future__ import annotations

import torch

from omnimem_train.memory.budgets import Limits
from omnimem_train.models.base import Modality


def select(scores: torch.Tensor, modality: torch.Tensor, limits: Limits) -> torch.Tensor | None:
    """scores (n,), modality (n,) -> ascending indices to keep, or None when everything fits.

    Among audio tokens keep the `limits.audio` best, among visual the `limits.visual` best (or the
    `limits.pooled` best of both together); all text. One index set, shared by all heads.
    """
    keep = modality == int(Modality.TEXT)
    if limits.pooled is not None:
        groups = [(~keep, limits.pooled)]
    else:
        groups = [(modality == int(Modality.AUDIO), limits.audio), (modality == int(Modality.VISUAL), limits.visual)]
    for mask, k in groups:
        idx = mask.nonzero().squeeze(1)
        if k is None or idx.numel() <= k:
            keep[idx] = True
        elif k > 0:
            keep[idx[scores[idx].float().topk(k).indices]] = True
    return None if bool(keep.all()) else keep.nonzero().squeeze(1)
