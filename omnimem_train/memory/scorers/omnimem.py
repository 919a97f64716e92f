"""OmniMem's perturbation-aware score (METHOD §3): score_i = sqrt(1 − s_i/2) · a_i^λ.

s_i: cosine of token i's layer-input hidden state with its two neighbours in [memory ; group]
(a missing neighbour counts as 1); sqrt(1 − s_i/2) is the RMS distance of i to its neighbours,
i.e. how much the sequence is perturbed if i is dropped. a_i: attention mass i receives from the
group's queries (heads averaged in logit space); tokens already in memory carry a running average
a_i ← (a_i + a_prev)/2. λ = 0 skips attention entirely (the novelty criterion).
"""

from __future__ import annotations

import dataclasses

import torch

from omnimem_train.memory.attention import attention_mass
from omnimem_train.memory.context import LayerContext
from omnimem_train.memory.scorers.base import Scorer, register_scorer

_EPS = 1e-12


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

    def new_token_extras(self, hidden_new):
        extras = {"hidden": hidden_new.detach()}
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
        return f"omnimem(λ={self.lam})"


@register_scorer("novelty")
@dataclasses.dataclass
class NoveltyScorer(OmniMemScorer):
    """Adjacent-similarity novelty only (λ = 0; video-SALMONN's S criterion): no attention needed."""

    lam: float = dataclasses.field(default=0.0, init=False)  # λ = 0 by definition

    def describe(self):
        return "novelty"
