"""OmniMem's perturbation-aware score (METHOD §3): score_i = sqrt(1 − s_i/2) · a_i^λ.

s_i: cosine of token i's layer-input hidden state with its two neighbours in [memory ; group]
(a missing neighbour counts as 1); sqrt(1 − s_i/2) is the RMS distance of i to its neighbours,
i.e. how much the sequence is perturbed if i is dropped. a_i: attention mass i receives from the
group's queries (heads averaged in logit space); tokens already in memory carry a running average
a_i ← (a_i + a_prev)/2. λ = 0 skips attention entirely (the novelty criterion).

The hidden states are kept only for cosines, so they may be stored smaller (`memory.sketch_dim`,
`memory.sketch_dtype`): unit-normalised, projected to `sketch_dim` dims by one fixed random matrix
with orthonormal columns (the same for every layer, group and stream, so a token in memory and a new
neighbour are compared in one space; Johnson–Lindenstrauss: cosines are kept to about ±sqrt(2/d)
relative in 1 − cos), and cast to `sketch_dtype`.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from omnimem_train.errors import ConfigError
from omnimem_train.memory.attention import attention_mass
from omnimem_train.memory.context import LayerContext
from omnimem_train.memory.scorers.base import Scorer, register_scorer

_EPS = 1e-12
SKETCH_SEED = 0  # the sketch matrix is a constant of (hidden size, sketch_dim), not a setting


@functools.lru_cache(maxsize=8)
def sketch_matrix(hidden_size: int, dim: int, seed: int = SKETCH_SEED) -> torch.Tensor:
    """(hidden_size, dim) float32 on the CPU, orthonormal columns: the QR of a Gaussian matrix drawn
    from `seed`. dim == hidden_size is a rotation (cosines exact)."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(hidden_size, dim, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()  # signs fixed: the same matrix on every LAPACK


@functools.lru_cache(maxsize=8)
def _sketch_on(hidden_size: int, dim: int, device: torch.device) -> torch.Tensor:
    """`sketch_matrix` on `device`: one copy per device, not one transfer per group and layer."""
    return sketch_matrix(hidden_size, dim).to(device)


def perturbation(hidden: torch.Tensor) -> torch.Tensor:
    """hidden (n, D) -> (n,) sqrt(1 − s_i/2), s_i = cos(h_i, h_{i−1}) + cos(h_i, h_{i+1})."""
    h = torch.nn.functional.normalize(hidden.float(), dim=-1)
    adj = (h[1:] * h[:-1]).sum(-1)  # cos(h_i, h_{i+1}) for i = 0..n-2
    one = torch.ones(1, dtype=adj.dtype, device=adj.device)
    s = torch.cat([one, adj]) + torch.cat([adj, one])
    return (1 - s / 2).clamp_min(0).sqrt()


@register_scorer("omnimem")
@dataclasses.dataclass
class OmniMemScorer(Scorer):
    lam: float = 0.02  # λ: the attention exponent (0 = novelty only)
    query_block: int = 256  # queries per block when computing attention mass
    sketch_dim: int | None = None  # store hidden states projected to this many dims (None: as they are)
    sketch_dtype: str | None = None  # store them in this dtype, unit-normalised (None: the model's)

    def stored_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (n, D) layer-input hidden states -> what extras["hidden"] keeps of them: (n, D) as
        they are, or, with a sketch, (n, sketch_dim) unit vectors in `sketch_dtype` (default: hidden's)."""
        hidden = hidden.detach()
        if self.sketch_dim is None and self.sketch_dtype is None:
            return hidden
        h = hidden.float()
        if self.sketch_dim is not None:
            d = hidden.shape[-1]
            if self.sketch_dim > d:
                raise ConfigError(f"memory.sketch_dim: {self.sketch_dim} is above the model's hidden size {d} "
                                  "(a sketch must be smaller; null keeps the hidden states)")
            h = h @ _sketch_on(d, self.sketch_dim, h.device)
        # Unit vectors: the score needs only directions, and float16 then cannot overflow.
        h = torch.nn.functional.normalize(h, dim=-1)
        return h.to(getattr(torch, self.sketch_dtype) if self.sketch_dtype else hidden.dtype)

    def new_token_extras(self, hidden_new):
        extras = {"hidden": self.stored_hidden(hidden_new)}
        if self.lam > 0:
            extras["attn"] = torch.zeros(hidden_new.shape[0], dtype=torch.float32, device=hidden_new.device)
        return extras

    def score(self, ctx: LayerContext) -> torch.Tensor:
        novelty = perturbation(ctx.cand.extras["hidden"])
        if self.lam == 0:
            return novelty
        a = attention_mass(ctx.queries().detach(), ctx.cand.keys.detach(), ctx.n_old, self.query_block)
        old = ctx.n_old
        a[:old] = (a[:old] + ctx.cand.extras["attn"][:old]) / 2
        ctx.cand.extras["attn"] = a
        return novelty * a.clamp_min(_EPS) ** self.lam

    def describe(self):
        return f"omnimem(λ={self.lam}{self._describe_sketch()})"

    def _describe_sketch(self) -> str:
        parts = ([f"sketch {self.sketch_dim}"] if self.sketch_dim is not None else []) + (
            [self.sketch_dtype] if self.sketch_dtype else [])
        return "".join(f", {p}" for p in parts)


@register_scorer("novelty")
@dataclasses.dataclass
class NoveltyScorer(OmniMemScorer):
    """Adjacent-similarity novelty only (λ = 0; video-SALMONN's S criterion): no attention needed."""

    lam: float = dataclasses.field(default=0.0, init=False)  # λ = 0 by definition

    def describe(self):
        sketch = self._describe_sketch()
        return f"novelty({sketch[2:]})" if sketch else "novelty"
