"""Frame dropping keeps whole, uniformly spaced time steps before the LLM, within the budget."""

import torch

from omnimem_train.memory.budgets import stream_counts as media_counts
from omnimem_train.memory.registry import make_policy
from omnimem_train.models.base import Modality
from tests.memory.streams import omni_pieces


def _chunks_kept(pieces, kept):
    """Indices of the media chunks (pieces) whose tokens survived, per modality."""
    out = {Modality.AUDIO: [], Modality.VISUAL: []}
    kept_pos = {tuple(p) for k in kept for p in k.positions.T.tolist()}
    media = [p for p in pieces if bool((p.modality != Modality.TEXT).any())]
    for j, p in enumerate(media):
        for m in out:
            mask = p.modality == int(m)
            if bool(mask.any()) and tuple(p.positions[:, mask.nonzero()[0, 0]].tolist()) in kept_pos:
                out[m].append(j)
    return out


def test_pooled_budget_keeps_every_other_chunk_with_both_modalities(tiny_omni):
    pieces = omni_pieces(tiny_omni)  # 3 chunks of 32 visual + 50 audio tokens
    counts = media_counts(pieces)
    budget = 2 * (32 + 50)  # room for two of the three chunks
    policy = make_policy("frame_drop", 4, budget=budget, modality_aware=False)
    policy.expect(counts)
    kept = list(policy.filter_stream(iter(pieces)))
    chunks = _chunks_kept(pieces, kept)
    assert chunks[Modality.AUDIO] == chunks[Modality.VISUAL] == [0, 2]
    n_media = sum(int((k.modality != Modality.TEXT).sum()) for k in kept)
    assert n_media == budget
    text = sum(int((p.modality == Modality.TEXT).sum()) for p in pieces)
    assert sum(int((k.modality == Modality.TEXT).sum()) for k in kept) == text


def test_low_expectation_still_respects_the_budget(tiny_omni):
    pieces = omni_pieces(tiny_omni)
    policy = make_policy("frame_drop", 4, budget=100, modality_aware=False)
    policy.expect({Modality.AUDIO: 1, Modality.VISUAL: 1})  # a wrong, far too low estimate
    kept = list(policy.filter_stream(iter(pieces)))
    assert sum(int((k.modality != Modality.TEXT).sum()) for k in kept) <= 100
    assert all(torch.equal(k.positions, k.positions) for k in kept)
