"""The memory-policy interface the streaming engine calls after each layer of each group."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from omnimem_train.memory.layer_memory import LayerMemory
from omnimem_train.models.base import Modality


class MemoryPolicy(ABC):
    """Decides which tokens a layer keeps after a group.

    `select` sees the candidates [memory ; new group] of one layer (new tokens are the last
    `n_new`) and returns the ascending indices to keep, or None to keep everything.
    Text tokens must always be kept.
    """

    name: str = "base"

    @abstractmethod
    def select(self, layer_idx: int, cand: LayerMemory, n_new: int) -> torch.Tensor | None:
        """-> (k,) long ascending indices into `cand`, or None (keep all)."""

    def describe(self) -> str:
        return self.name


def text_mask(cand: LayerMemory) -> torch.Tensor:
    """(n,) bool: tokens that are always kept (text, specials, delimiters)."""
    return cand.modality == int(Modality.TEXT)
