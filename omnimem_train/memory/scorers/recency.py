"""recency: StreamingLLM: the first `sink_tokens` audio/visual tokens plus the most recent ones."""

from __future__ import annotations

import dataclasses

import torch

from omnimem_train.memory.scorers.base import Scorer, register_scorer
from omnimem_train.models.base import Modality


@register_scorer("recency")
@dataclasses.dataclass
class RecencyScorer(Scorer):
    """StreamingLLM: the first `sink_tokens` audio/visual tokens plus the most recent ones."""

    sink_tokens: int = 4  # the stream's first media tokens, always kept


    def new_token_extras(self, hidden_new):
        return {"sink": torch.zeros(hidden_new.shape[0], dtype=torch.bool, device=hidden_new.device)}

    def score(self, ctx):
        media = ctx.cand.modality != int(Modality.TEXT)
        # A sink is one of the stream's first `sink_tokens` media tokens, marked when it arrives (its
        # rank among the media seen so far) and carried with it: a modality budget below the sink
        # count may evict a sink, and the next media token in memory must not become one.
        new = media[ctx.n_old:]
        before = sum(ctx.seen.values()) - int(new.sum())
        rank = before + new.long().cumsum(0)
        sink = ctx.cand.extras["sink"].clone()
        sink[ctx.n_old:] = new & (rank <= self.sink_tokens)
        ctx.cand.extras["sink"] = sink
        scores = ctx.cand.index.float()
        scores[sink] = float("inf")
        return scores
