"""Batched full-context loss: the answer cross-entropy of several streams in one padded forward.

With `compression: none` nothing is evicted, so streaming group by group is only a slower way to
compute the same thing (tests/streaming check streaming == one full forward). Training the
*uncompressed* base model therefore runs each batch as one right-padded forward of the decoder on
(stream + question + answer) embeddings with the stream's own positions (TMRoPE for Omni, M-RoPE for
the video-SALMONN 2+ family) and the stream's `layer_adds` (DeepStack features, added after the first
decoder layers as the engine adds them), and the loss of each example is the mean CE over its answer
tokens, exactly `streaming.answer.answer_loss`.

Several questions about one stream share it: the row is packed as stream, Q1 A1, Q2 A2, ... and a
4-D attention mask lets each question+answer see the stream and itself only; every question starts
at the position that follows the stream. Each question's loss is the one it would have alone (tested),
at the cost of one stream instead of k.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from omnimem_train.models.base import ModelAdapter, StreamPiece


@dataclass
class Sequence:
    """One stream: its context pieces (prefix + media), then (question ids, answer ids) pairs."""

    pieces: list[StreamPiece]
    questions: list[tuple[list[int], list[int]]]


def full_context_loss(adapter: ModelAdapter, seqs: list[Sequence]) -> torch.Tensor:
    """Mean over all questions of the mean answer-token CE; one decoder forward of shape (B, L_max, D)."""
    rows, segments, spans = [], [], []
    for b, s in enumerate(seqs):
        tail = [p for p in s.pieces if len(p)]
        next_pos = tail[-1].next_pos() if tail else 0  # where the engine continues text after the stream
        parts, seg = list(s.pieces), [0] * sum(len(p) for p in s.pieces)
        for j, (question, answer) in enumerate(s.questions, start=1):
            ids = list(question) + list(answer)
            parts.append(adapter.text_piece(ids[:-1], next_pos))
            seg += [j] * (len(ids) - 1)
            spans.append((b, len(seg) - len(answer), answer))
        rows.append(StreamPiece.cat(parts))
        segments.append(seg)
    embeds, positions, pad, adds = pad_batch(rows)
    mask = packed_mask(segments, pad, embeds.dtype)
    hidden = adapter.decoder_hidden(embeds, positions, mask, adds)  # (B, L, D)
    losses = []
    for b, start, answer in spans:
        logits = adapter.lm_head(hidden[b, start : start + len(answer)])
        target = torch.tensor(answer, device=logits.device)
        losses.append(torch.nn.functional.cross_entropy(logits.float(), target))
    return torch.stack(losses).mean()


def packed_mask(segments: list[list[int]], pad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, L, L) additive mask: token i sees token j <= i of the stream (segment 0) or of its own
    segment; padding sees only itself (a row with nothing to attend to would give NaN)."""
    seg = torch.full(pad.shape, -1, dtype=torch.long, device=pad.device)
    for b, s in enumerate(segments):
        seg[b, : len(s)] = torch.tensor(s, dtype=torch.long)
    n = pad.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=pad.device).tril()
    same = (seg[:, :, None] == seg[:, None, :]) | (seg[:, None, :] == 0)
    real = pad.bool()
    allowed = causal & same & real[:, :, None] & real[:, None, :] | torch.eye(n, dtype=torch.bool, device=pad.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=pad.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)


def pad_batch(rows: list[StreamPiece]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Right-pad -> embeds (B, L, D), positions (P, B, L), attention mask (B, L) (1 = real token) and
    the rows' `layer_adds` as (K, B, L, D) (K the most any row has; zero for padding and for the rows
    or layers a row has none of), or None when no row has any."""
    n, d = max(len(r) for r in rows), rows[0].embeds.shape[1]
    p, dev, dtype = rows[0].positions.shape[0], rows[0].embeds.device, rows[0].embeds.dtype
    embeds = torch.zeros(len(rows), n, d, device=dev, dtype=dtype)
    positions = torch.zeros(p, len(rows), n, device=dev, dtype=torch.long)
    mask = torch.zeros(len(rows), n, device=dev, dtype=torch.long)
    k = max((r.layer_adds.shape[0] for r in rows if r.layer_adds is not None), default=0)
    adds = torch.zeros(k, len(rows), n, d, device=dev, dtype=dtype) if k else None
    for b, r in enumerate(rows):
        embeds[b, : len(r)], positions[:, b, : len(r)], mask[b, : len(r)] = r.embeds, r.positions, 1
        if r.layer_adds is not None:
            adds[: len(r.layer_adds), b, : len(r)] = r.layer_adds
    return embeds, positions, mask, adds
