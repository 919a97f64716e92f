"""Per-layer retained memory: the tokens one decoder layer keeps between streaming groups.

Every decoder layer owns one `LayerMemory`; layers may hold different tokens and different counts.
Tensors of one token travel together (key, value, original position, modality, stream index, and
any per-token state a memory policy keeps in `extras`), so selection is a single `take(idx)`.

Two layouts. Shared (the default): one token set for all KV heads, slot j of every head is the same
stream token. Per head (`memory.per_head`): every KV head keeps its own tokens, the same number per
head so keys/values stay rectangular, and slot j of head g may be a different stream token than slot
j of head h; the bookkeeping then has a head axis. Attention only reads keys/values, and all memory
precedes the group with RoPE already applied, so the engine's attention is the same for both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from omnimem_train.models.base import Modality


@dataclass
class LayerMemory:
    """Retained tokens of one layer, in temporal order (per head, in the per-head layout).

    keys, values: (1, n_kv_heads, n, head_dim), RoPE already applied to keys
    positions:    (P, n) original rotary positions (never re-indexed); per head (P, G, n)
    modality:     (n,) `Modality` labels; per head (G, n)
    index:        (n,) absolute index of the token in the stream; per head (G, n)
    extras:       name -> (n, ...) per-token state a policy keeps (e.g. running attention);
                  per head (G, n, ...)
    """

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    modality: torch.Tensor
    index: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Tokens held (per KV head)."""
        return self.keys.shape[2]

    @property
    def per_head(self) -> bool:
        """Whether every KV head holds its own tokens (bookkeeping with a head axis)."""
        return self.index.dim() == 2

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

    def by_head(self) -> LayerMemory:
        """The same memory in the per-head layout (every head holding every token): expanded views of
        the shared bookkeeping, no copy. Self if already per head."""
        if self.per_head:
            return self
        g = self.keys.shape[1]
        return LayerMemory(
            self.keys,
            self.values,
            self.positions.unsqueeze(1).expand(-1, g, -1),
            self.modality.expand(g, -1),
            self.index.expand(g, -1),
            {k: v.expand(g, *v.shape) for k, v in self.extras.items()},
        )

    def append(self, other: LayerMemory, keys: torch.Tensor | None = None,
               values: torch.Tensor | None = None) -> LayerMemory:
        """[self ; other] along the token axis. Both must carry the same extras: a policy that
        keeps per-token state provides it for every new token. `keys`/`values`: the concatenation
        if the caller already made it (attention needs it anyway), to avoid a second copy. A shared
        group appended to a per-head memory is shared by every head (the result is per head)."""
        if self.extras.keys() != other.extras.keys():
            raise ValueError(f"extras differ: memory has {sorted(self.extras)}, new tokens {sorted(other.extras)}")
        per_head = self.per_head
        if per_head != other.per_head:
            self, other, per_head = self.by_head(), other.by_head(), True
        axis = 1 if per_head else 0  # the token axis of extras
        extras = {k: torch.cat([v, other.extras[k]], dim=axis) for k, v in self.extras.items()}
        return LayerMemory(
            keys if keys is not None else torch.cat([self.keys, other.keys], dim=2),
            values if values is not None else torch.cat([self.values, other.values], dim=2),
            torch.cat([self.positions, other.positions], dim=-1),
            torch.cat([self.modality, other.modality], dim=-1),
            torch.cat([self.index, other.index], dim=-1),
            extras,
        )

    def take(self, idx: torch.Tensor) -> LayerMemory:
        """Keep tokens `idx`, ascending so temporal order is preserved: (k,) long, the same slots in
        every head; or (G, k) long, row g the slots head g keeps (the result is then per head)."""
        if idx.dim() == 2:
            return self._take_per_head(idx)
        axis = 1 if self.per_head else 0
        return LayerMemory(
            self.keys.index_select(2, idx),
            self.values.index_select(2, idx),
            self.positions.index_select(-1, idx),
            self.modality.index_select(-1, idx),
            self.index.index_select(-1, idx),
            {k: v.index_select(axis, idx) for k, v in self.extras.items()},
        )

    def _take_per_head(self, idx: torch.Tensor) -> LayerMemory:
        """idx (G, k): head g keeps its slots idx[g]. The shared layout is first viewed per head, so
        one gather serves both (keys are gathered, not copied per head then indexed)."""
        m = self.by_head()
        g, k = idx.shape
        kv_idx = idx[None, :, :, None].expand(1, g, k, m.keys.shape[-1])
        rows = torch.arange(g, device=idx.device)[:, None]  # with idx: element [g, j] -> (g, idx[g, j])
        return LayerMemory(
            m.keys.gather(2, kv_idx),
            m.values.gather(2, kv_idx),
            m.positions[:, rows, idx],
            m.modality[rows, idx],
            m.index[rows, idx],
            {name: v[rows, idx] for name, v in m.extras.items()},
        )

    def count(self, modality: Modality) -> int | float:
        """Tokens of `modality` held; per head the mean over heads (a float). Every head holds the same
        number of tokens and of text, and with modality-aware budgets of each modality, but under a
        pooled budget heads may split it differently between audio and visual."""
        counts = (self.modality == int(modality)).sum(-1)
        return int(counts) if counts.dim() == 0 else counts.sum().item() / counts.numel()

    def kv_bytes(self) -> int:
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()

    def meta_bytes(self) -> int:
        """Bookkeeping kept per token: original positions, modality label, stream index (per head in
        the per-head layout, so G times as much)."""
        return sum(t.numel() * t.element_size() for t in (self.positions, self.modality, self.index))

    def extra_bytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.extras.values())


@dataclass(frozen=True)
class TokenBytes:
    """Bytes one retained token costs at one layer, split as `LayerMemory` counts them: K/V, the
    engine's bookkeeping (`meta_bytes`) and the policy's per-token state (`extra_bytes`)."""

    kv: int
    meta: int
    extra: int

    @property
    def total(self) -> int:
        return self.kv + self.meta + self.extra


@dataclass(frozen=True)
class TokenShape:
    """What one layer stores of one token: K/V of `n_kv_heads` heads of `head_dim` in `dtype`,
    `position_dims` original positions, and hidden states of `hidden_size` (what a policy's
    per-token state is computed from)."""

    n_kv_heads: int
    head_dim: int
    hidden_size: int
    position_dims: int
    dtype: torch.dtype

    @staticmethod
    def of_adapter(adapter) -> TokenShape:
        """Read from the first decoder layer's attention (its k_proj rows are n_kv_heads x head_dim)
        and the LM head (rows of `hidden_size`), as the engine stores them."""
        attn = adapter.decoder_layers[0].self_attn
        return TokenShape(attn.k_proj.weight.shape[0] // attn.head_dim, attn.head_dim,
                          adapter.lm_head.weight.shape[1], adapter.position_dims, adapter.dtype)

    def token_bytes(self, extras: dict[str, torch.Tensor] | None = None, per_head: bool = False) -> TokenBytes:
        """extras: name -> (1, ...) one token's per-token state (nothing: a method keeping K/V only);
        per_head: the per-head layout (bookkeeping and extras once per KV head). Measured on a one-token
        `LayerMemory`, so the count is the one the memory report makes."""
        kv = torch.zeros(1, self.n_kv_heads, 1, self.head_dim, dtype=self.dtype)
        one = LayerMemory(kv, kv, torch.zeros(self.position_dims, 1, dtype=torch.long),
                          torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), dict(extras or {}))
        if per_head:
            one = one.by_head()
        return TokenBytes(one.kv_bytes(), one.meta_bytes(), one.extra_bytes())
