"""What a memory policy sees at one decoder layer after one group: the candidates and the means to
compute the group's queries (lazily: methods that do not need attention never pay for it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from omnimem_train.memory.layer_memory import LayerMemory
from omnimem_train.models.base import Modality


@dataclass
class LayerContext:
    """One layer, one group.

    cand:       [memory ; group] of this layer (the group is the last `n_new` tokens), with extras
    n_new:      tokens in the group
    seen:       media tokens seen so far in the stream, by modality (this group included)
    hidden_new: (n_new, D) layer-input hidden states (residual stream, before the input norm)
    """

    layer_idx: int
    cand: LayerMemory
    n_new: int
    seen: dict[Modality, int]
    hidden_new: torch.Tensor
    _queries_fn: Callable[[], torch.Tensor] | None = None
    _queries: torch.Tensor | None = field(default=None, repr=False)

    def queries(self) -> torch.Tensor:
        """(n_heads, n_new, head_dim): the group's queries with RoPE applied, as attention saw them."""
        if self._queries is None:
            if self._queries_fn is None:
                raise RuntimeError("this context has no query function")
            with torch.no_grad():  # selection is not differentiated (METHOD §5)
                self._queries = self._queries_fn()
        return self._queries

    @property
    def n_old(self) -> int:
        return self.cand.n - self.n_new
