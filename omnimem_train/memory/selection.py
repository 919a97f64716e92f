"""Top-k selection under per-modality (or pooled) limits; text always kept; temporal order kept.

`select`: one index set shared by all KV heads (OmniMem's rule). `select_per_head`: every KV head its
own top-k (`memory.per_head`, the rule of per-head references such as kvpress's presses).
"""

from __future__ import annotations

import torch

from omnimem_train.memory.budgets import Limits
from omnimem_train.models.base import Modality


def _competitions(modality: torch.Tensor, limits: Limits) -> tuple[torch.Tensor, list]:
    """-> (text mask: always kept, [(mask of the tokens that compete, how many may stay), ...]):
    audio and visual apart under aware limits, all media together under a pooled one. Any shape."""
    text = modality == int(Modality.TEXT)
    if limits.pooled is not None:
        return text, [(~text, limits.pooled)]
    return text, [(modality == int(Modality.AUDIO), limits.audio), (modality == int(Modality.VISUAL), limits.visual)]


def select(scores: torch.Tensor, modality: torch.Tensor, limits: Limits) -> torch.Tensor | None:
    """scores (n,), modality (n,) -> ascending indices to keep, or None when everything fits.

    Among audio tokens keep the `limits.audio` best, among visual the `limits.visual` best (or the
    `limits.pooled` best of both together); all text. One index set, shared by all heads.
    """
    keep, groups = _competitions(modality, limits)
    for mask, k in groups:
        idx = mask.nonzero().squeeze(1)
        if k is None or idx.numel() <= k:
            keep[idx] = True
        elif k > 0:
            keep[idx[scores[idx].float().topk(k).indices]] = True
    return None if bool(keep.all()) else keep.nonzero().squeeze(1)


def select_per_head(scores: torch.Tensor, modality: torch.Tensor, limits: Limits) -> torch.Tensor | None:
    """Per-KV-head `select`: scores (G, n), modality (G, n) -> (G, k) indices, each row ascending, or
    None when everything fits.

    Each head keeps all its text and its own top `limits.audio` audio / `limits.visual` visual
    tokens (or top `limits.pooled` media). Every head's candidates hold the same number of tokens of
    each kind counted (of each modality under aware limits, of media under pooled ones), since the
    heads' memories were selected alike and the group is shared; so every head keeps the same
    count and the result is rectangular.
    """
    g = scores.shape[0]
    keep, groups = _competitions(modality, limits)
    for mask, k in groups:
        per_head = mask.sum(1)
        c = int(per_head[0])
        if not bool((per_head == c).all()):
            raise ValueError(f"per-head selection needs equal candidate counts per head, got {per_head.tolist()}")
        if k is None or c <= k:
            keep |= mask
        elif k > 0:
            idx = mask.nonzero()[:, 1].view(g, c)  # row g: head g's candidates of this kind, ascending
            best = scores.gather(1, idx).float().topk(k, dim=1).indices
            keep.scatter_(1, idx.gather(1, best), True)
    return None if bool(keep.all()) else keep.nonzero()[:, 1].view(g, -1)
