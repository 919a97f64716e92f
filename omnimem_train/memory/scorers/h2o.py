"""h2o: Heavy hitters: attention accumulated over every group a token has seen (kept with the token)."""

from __future__ import annotations

import dataclasses

import torch

from omnimem_train.memory.attention import attention_mass, attention_mass_per_head
from omnimem_train.memory.scorers.base import Scorer, register_scorer


@register_scorer("h2o")
@dataclasses.dataclass
class H2OScorer(Scorer):
    """Heavy hitters: attention accumulated over every group a token has seen (kept with the token).

    With memory.per_head (H2O's own rule) every KV head accumulates the attention its query heads
    give its own tokens: `acc_attn` is then (G, n) in the per-head memory, entry [g, i] head g's
    total for its slot i, and travels with that slot through selection.
    """

    supports_per_head = True

    query_block: int = 256  # queries per block when computing attention mass


    def new_token_extras(self, hidden_new):
        # Per token, also per head: appended to a per-head memory it is every head's zero start.
        return {"acc_attn": torch.zeros(hidden_new.shape[0], dtype=torch.float32, device=hidden_new.device)}

    def score(self, ctx):
        mass = attention_mass_per_head if self.per_head else attention_mass  # (G, n) or (n,)
        a = mass(ctx.queries().detach(), ctx.cand.keys.detach(), ctx.n_old, self.query_block)
        ctx.cand.extras["acc_attn"] = ctx.cand.extras["acc_attn"] + a
        return ctx.cand.extras["acc_attn"]
