"""Per-layer retained memory: the tokens one decoder layer keeps between streaming groups.

Every decoder layer owns one `LayerMemory`; layers may hold different tokens and different counts.
Tensors of one token travel together (key, value, original position, modality, stream index, and
any per-token state a memory policy keeps in `extras`), so selection is a single `take(idx)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from omnimem_train.models.base import Modality


@dataclass
class LayerMemory:
    """Retained tokens of one layer, in temporal order.

    keys, values: (1, n_kv_heads, n, head_dim), RoPE already applied to keys
    positions:    (P, n) original rotary positions (never re-indexed)
    modality:     (n,) `Modality` labels
    index:        (n,) absolute index of the token in the stream
    extras:       name -> (n, ...) per-token state a policy keeps (e.g. running attention)
    """

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    modality: torch.Tensor
    index: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.keys.shape[2]

    @staticmethod
    def empty(n_kv_heads: int, head_dim: int, position_dims: int, dtype, device) -> LayerMemory:
        kv = torch.zeros(1, n_kv_heads, 0, head_dim, dtype=dtype, device=device)
        return LayerMemory(
            kv,
            kv.clone(),
            torch.zeros(position_dims, 0, dtype=torch.long, device=device),
            torch.zeros(0, dtype=torch.long, device=device),
            torch.zeros(0, dtype=torch.long, device=device),
        )

    def append(self, other: LayerMemory, keys: torch.Tensor | None = None,
               values: torch.Tensor | None = None) -> LayerMemory:
        """[self ; other] along the token axis. Both must carry the same extras: a policy that
        keeps per-token state provides it for every new token. `keys`/`values`: the concatenation
        if the caller already made it (attention needs it anyway), to avoid a second copy."""
        if self.extras.keys() != other.extras.keys():
            raise ValueError(f"extras differ: memory has {sorted(self.extras)}, new tokens {sorted(other.extras)}")
        extras = {k: torch.cat([v, other.extras[k]]) for k, v in self.extras.items()}
        return LayerMemory(
            keys if keys is not None else torch.cat([self.keys, other.keys], dim=2),
            values if values is not None else torch.cat([self.values, other.values], dim=2),
            torch.cat([self.positions, other.positions], dim=1),
            torch.cat([self.modality, other.modality]),
            torch.cat([self.index, other.index]),
            extras,
        )

    def take(self, idx: torch.Tensor) -> LayerMemory:
        """Keep tokens `idx` ((k,) long, ascending so temporal order is preserved)."""
        return LayerMemory(
            self.keys.index_select(2, idx),
            self.values.index_select(2, idx),
            self.positions.index_select(1, idx),
            self.modality.index_select(0, idx),
            self.index.index_select(0, idx),
            {k: v.index_select(0, idx) for k, v in self.extras.items()},
        )

    def count(self, modality: Modality) -> int:
        return int((self.modality == int(modality)).sum())

    def kv_bytes(self) -> int:
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()

    def meta_bytes(self) -> int:
        """Bookkeeping kept per token: original positions, modality label, stream index."""
        return sum(t.numel() * t.element_size() for t in (self.positions, self.modality, self.index))

    def extra_bytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.extras.values())
