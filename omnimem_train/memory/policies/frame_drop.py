"""Uniform frame dropping before the LLM: the naive baseline at the same token budget.

Whole time steps (a stream piece's media: a 2-s chunk's video and audio, or a text-proxy segment;
with modality-aware budgets each modality's part is a step of its own) are kept every k-th step, k = ceil(expected tokens / budget), so the kept
time steps are spread uniformly over the stream; nothing is evicted afterwards. A step that would
overflow the budget is dropped too, so the budget holds even when the expectation was low.
"""

from __future__ import annotations

import math

from omnimem_train.memory.budgets import Budgets
from omnimem_train.memory.policy import BudgetedPolicy
from omnimem_train.models.base import Modality, StreamPiece

_MEDIA = (Modality.AUDIO, Modality.VISUAL)


class FrameDropPolicy(BudgetedPolicy):
    name = "frame_drop"

    def __init__(self, budgets: Budgets):
        super().__init__(budgets)
        self.expected: dict[Modality, int] = {}

    def expect(self, tokens: dict[Modality, int]) -> None:
        super().expect(tokens)
        self.expected = {m: int(tokens.get(m, 0)) for m in _MEDIA}  # exact counts also carry text

    def update(self, ctx):
        return ctx.cand

    def _caps(self) -> dict:
        """Cap per modality (or one pooled cap under key None): the tightest layer's limit."""
        limits = self.budgets.static_limits()
        if limits is None:
            if self.budgets.keep_fraction is None:
                return {}
            f = self.budgets.keep_fraction
            per = {m: int(self.expected.get(m, 0) * f) for m in _MEDIA}
            return per if self.budgets.modality_aware else {None: int(sum(self.expected.values()) * f)}
        if self.budgets.modality_aware:
            return {Modality.AUDIO: min(x.audio for x in limits), Modality.VISUAL: min(x.visual for x in limits)}
        return {None: min(x.pooled for x in limits)}

    def filter_stream(self, pieces):
        caps = self._caps()
        if not caps:
            yield from pieces
            return
        expected = {m: self.expected.get(m, 0) for m in _MEDIA}
        expected[None] = sum(expected.values())
        step_tokens = {m: [] for m in (*_MEDIA, None)}  # token counts of each step seen so far
        kept = dict.fromkeys(caps, 0)
        for piece in pieces:
            keep = piece.modality == int(Modality.TEXT)
            for key, mask in self._steps(piece, caps):
                n = int(mask.sum())
                if n == 0:
                    continue
                step = len(step_tokens[key])
                step_tokens[key].append(n)
                stride = self._stride(expected[key], caps[key], step_tokens[key])
                if step % stride == 0 and kept[key] + n <= caps[key]:
                    keep |= mask
                    kept[key] += n
            if bool(keep.all()):
                yield piece
            elif bool(keep.any()):
                yield piece.take(keep.nonzero().squeeze(1))

    @staticmethod
    def _steps(piece: StreamPiece, caps: dict):
        """(cap key, token mask) of the time steps in a piece: one per modality, or one for all media."""
        if None in caps:
            yield None, piece.modality != int(Modality.TEXT)
        else:
            for m in _MEDIA:
                yield m, piece.modality == int(m)

    @staticmethod
    def _stride(expected: int, cap: int, steps: list[int]) -> int:
        if cap <= 0:
            return 1  # nothing fits; the overflow check drops every step
        total = max(expected, sum(steps))
        return max(1, math.ceil(total / cap))

    def describe(self):
        return f"frame_drop(caps={ {getattr(k, 'name', 'pooled'): v for k, v in self._caps().items()} })"

