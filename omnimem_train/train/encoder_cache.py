"""Frozen-encoder output cache for training: decode and encode each clip once, not once per epoch.

With frozen towers (`train_encoders: false`) a clip's media embeddings are constants, so the
second epoch onwards only runs the LLM. What is cached is the adapter's stream *after* the
encoders: media pieces keep their (detached) embeddings, text pieces (the prefix and the media
delimiters) keep only their ids and are re-embedded on every use, because the token embedding
table is trainable.

Memory: one float per stream token per hidden unit (an 8-s testbed clip at hidden 128 is
~1,000 tokens = 0.5 MiB); `max_items` bounds it (least recently used entries are dropped).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable

import torch

from omnimem_train.models.base import ModelAdapter, StreamPiece

Key = tuple


class EncoderCache:
    """key -> (stream pieces, expected tokens per modality), LRU-bounded."""

    def __init__(self, adapter: ModelAdapter, max_items: int | None = None):
        self.adapter, self.max_items = adapter, max_items
        self._items: OrderedDict[Key, tuple[list[StreamPiece], dict]] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Key, build: Callable[[], tuple[Iterable[StreamPiece], dict]]) -> tuple[list[StreamPiece], dict]:
        """The stream for `key` (fresh text embeddings); `build()` -> (pieces, expected) on a miss."""
        if key in self._items:
            self.hits += 1
            self._items.move_to_end(key)
        else:
            self.misses += 1
            with torch.no_grad():
                pieces, expected = build()
            self._items[key] = ([_frozen(p) for p in pieces], dict(expected))
            if self.max_items is not None and len(self._items) > self.max_items:
                self._items.popitem(last=False)
        pieces, expected = self._items[key]
        return [self.adapter.reembed(p) for p in pieces], dict(expected)


def _frozen(piece: StreamPiece) -> StreamPiece:
    if piece.is_text:
        if piece.token_ids is None:
            raise ValueError("EncoderCache: a text piece without token ids cannot be re-embedded")
        embeds = piece.embeds[:0].detach()  # ids are enough: re-embedded on use
    else:
        embeds = piece.embeds.detach()
    return StreamPiece(embeds, piece.modality, piece.positions, piece.end_s, piece.token_ids)
