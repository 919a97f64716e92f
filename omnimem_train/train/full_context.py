"""Batched full-context loss: the answer cross-entropy of several streams in one padded forward.

With `compression: none` nothing is evicted, so streaming group by group is only a slower way to
compute the same thing (tests/streaming check streaming == one full forward). Training the
*uncompressed* base model therefore runs each batch as one right-padded forward of the decoder on
(stream + question + answer) embeddings with the stream's own positions (TMRoPE for Omni), and the
loss of each example is the mean CE over its answer tokens, exactly `streaming.answer.answer_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from omnimem_train.models.base import ModelAdapter, StreamPiece


@dataclass
class Sequence:
    """One example: its context pieces (prefix + media), then question ids and answer ids."""

    pieces: list[StreamPiece]
    question_ids: list[int]
    answer_ids: list[int]


def full_context_loss(adapter: ModelAdapter, seqs: list[Sequence]) -> torch.Tensor:
    """Mean over examples of the mean answer-token CE; one decoder forward of shape (B, L_max, D)."""
    rows, spans = [], []
    for s in seqs:
        # Where the engine continues text after a stream (`StreamState.next_pos`): after the last token.
        tail = [p for p in s.pieces if len(p)]
        next_pos = int(tail[-1].positions[:, -1].max()) + 1 if tail else 0
        ids = list(s.question_ids) + list(s.answer_ids)
        row = StreamPiece.cat([*s.pieces, adapter.text_piece(ids[:-1], next_pos)])
        rows.append(row)
        spans.append((len(row) - len(s.answer_ids), s.answer_ids))
    embeds, positions, mask = pad_batch(rows)
    hidden = adapter.decoder_hidden(embeds, positions, mask)  # (B, L, D)
    losses = []
    for b, (start, answer) in enumerate(spans):
        logits = adapter.lm_head(hidden[b, start : start + len(answer)])
        target = torch.tensor(answer, device=logits.device)
        losses.append(torch.nn.functional.cross_entropy(logits.float(), target))
    return torch.stack(losses).mean()


def pad_batch(rows: list[StreamPiece]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad -> embeds (B, L, D), positions (P, B, L), attention mask (B, L) (1 = real token)."""
    n, d = max(len(r) for r in rows), rows[0].embeds.shape[1]
    p, dev, dtype = rows[0].positions.shape[0], rows[0].embeds.device, rows[0].embeds.dtype
    embeds = torch.zeros(len(rows), n, d, device=dev, dtype=dtype)
    positions = torch.zeros(p, len(rows), n, device=dev, dtype=torch.long)
    mask = torch.zeros(len(rows), n, device=dev, dtype=torch.long)
    for b, r in enumerate(rows):
        embeds[b, : len(r)], positions[:, b, : len(r)], mask[b, : len(r)] = r.embeds, r.positions, 1
    return embeds, positions, mask
