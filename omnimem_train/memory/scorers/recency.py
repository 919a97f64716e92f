"""recency: StreamingLLM: the first `sink_tokens` audio/visual tokens plus the most recent ones."""

from __future__ import annotations

from omnimem_train.memory.scorers.base import Scorer, register_scorer
from omnimem_train.models.base import Modality


@register_scorer("recency")
class RecencyScorer(Scorer):
    """StreamingLLM: the first `sink_tokens` audio/visual tokens plus the most recent ones."""

    def __init__(self, sink_tokens: int = 4):
        self.sink_tokens = sink_tokens

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg.sink_tokens)

    def score(self, ctx):
        scores = ctx.cand.index.float()
        media = ctx.cand.modality != int(Modality.TEXT)
        # Sinks are never evicted, so the first media tokens in memory are the stream's first ones.
        rank = media.long().cumsum(0)
        scores[media & (rank <= self.sink_tokens)] = float("inf")
        return scores
