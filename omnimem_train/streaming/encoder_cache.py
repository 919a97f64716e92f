"""Encoder output cache for training: decode and encode each clip once, not once per epoch.

With frozen towers (`train_encoders: none`) a clip's media embeddings are constants, so the
second epoch onwards only runs the LLM. What is cached is the adapter's stream *after* the
encoders: media pieces keep their (detached) embeddings, text pieces (the prefix and the media
delimiters) keep only their ids and are re-embedded on every use, because the token embedding
table is trainable.

With a trained audio tower (`train_encoders: audio`, `train_audio=True`) the vision outputs are
still constants, but the audio ones are not: the entry also keeps the clip's log-mel windows (the
tower's input) and every use re-encodes them with autograd into the stream's audio rows. The
log-mel is small (128 floats per 10 ms: 0.2 MiB for 4 s) next to the vision tower's pixel input,
which is why only the audio tower can train on top of the cache.

Memory: one float per stream token per hidden unit (an 8-s testbed clip at hidden 128 is
~1,000 tokens = 0.5 MiB), plus the log-mel with `train_audio`; `max_items` bounds it (least
recently used entries are dropped; 0 keeps nothing, which still gives the frozen-vision /
trained-audio stream of an uncached run).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from omnimem_train.models.base import MediaInput, Modality, ModelAdapter, StreamPiece

Key = tuple


class EncoderCache:
    """key -> (stream pieces, expected tokens per modality[, log-mel windows]), LRU-bounded."""

    def __init__(self, adapter: ModelAdapter, max_items: int | None = None, train_audio: bool = False):
        self.adapter, self.max_items, self.train_audio = adapter, max_items, train_audio
        self._items: OrderedDict[Key, tuple[list[StreamPiece], dict, list[np.ndarray] | None]] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Key, load_media: Callable[[], MediaInput], prefix_ids: list[int]
            ) -> tuple[list[StreamPiece], dict]:
        """The stream of `prefix_ids` + the media `load_media()` returns (called on a miss only),
        with fresh text embeddings (and, with `train_audio`, freshly encoded audio)."""
        entry = self._items.get(key)
        if entry is not None:
            self.hits += 1
            self._items.move_to_end(key)
        else:
            self.misses += 1
            entry = self._build(load_media(), prefix_ids)
            if self.max_items != 0:
                self._items[key] = entry
            if self.max_items is not None and len(self._items) > self.max_items:
                self._items.popitem(last=False)
        frozen, expected, windows = entry
        pieces = [self.adapter.reembed(p) for p in frozen]
        if windows is not None:
            pieces = with_audio(pieces, self.adapter.encode_audio_windows(windows))
        return pieces, dict(expected)

    def _build(self, media: MediaInput, prefix_ids: list[int]):
        windows = None
        if self.train_audio and media.mel_windows is not None:
            windows = []
            media.mel_windows = _recorded(media.mel_windows, windows)
        with torch.no_grad():
            pieces = [_frozen(p) for p in self.adapter.stream(media, prefix_ids)]
        return pieces, dict(media.expected_tokens), windows


def with_audio(pieces: list[StreamPiece], audio: torch.Tensor) -> list[StreamPiece]:
    """`pieces` with their audio rows replaced, in stream order, by `audio` ((n_audio, D), e.g. the
    output of a trained tower); the stream must hold exactly n_audio audio rows."""
    masks = [p.modality == int(Modality.AUDIO) for p in pieces]
    counts = [int(m.sum()) for m in masks]
    if sum(counts) != len(audio):
        raise ValueError(f"with_audio: the stream holds {sum(counts)} audio tokens, the encoded audio {len(audio)}")
    out, used = [], 0
    for piece, mask, n in zip(pieces, masks, counts):
        if n:
            rows = audio[used : used + n].to(piece.embeds.dtype)
            piece = dataclasses.replace(piece, embeds=piece.embeds.masked_scatter(mask.unsqueeze(-1), rows))
            used += n
        out.append(piece)
    return out


def _recorded(windows: Iterable[np.ndarray], into: list[np.ndarray]) -> Iterator[np.ndarray]:
    for window in windows:
        into.append(np.asarray(window, dtype=np.float32))
        yield window


def _frozen(piece: StreamPiece) -> StreamPiece:
    if piece.is_text:
        if piece.token_ids is None:
            raise ValueError("EncoderCache: a text piece without token ids cannot be re-embedded")
        embeds = piece.embeds[:0].detach()  # ids are enough: re-embedded on use
    else:
        embeds = piece.embeds.detach()
    adds = None if piece.layer_adds is None else piece.layer_adds.detach()
    return dataclasses.replace(piece, embeds=embeds, layer_adds=adds)
