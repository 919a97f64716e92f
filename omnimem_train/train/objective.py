"""The training objective: the *same* group-wise (compressed) streaming forward as inference,
with gradients through the retained memory into earlier groups, and cross-entropy on the answer
tokens only (METHOD §5).

`StreamingObjective` is the module the Trainer (and DeepSpeed/DDP) wraps: its forward takes a batch
of manifest rows and returns the mean loss, so the distributed wrappers see a normal forward call.
Selection indices are not differentiated; encoder outputs are detached unless encoders train.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from omnimem_train.config.schema import MediaConfig
from omnimem_train.memory.report import MemoryReport
from omnimem_train.models.base import ModelAdapter, StreamPiece
from omnimem_train.models.prompt import format_question, split_chat_prompt
from omnimem_train.streaming.answer import answer_loss
from omnimem_train.streaming.engine import StreamingEngine
from omnimem_train.streaming.inputs import media_input


@dataclass
class Example:
    """What one manifest row contributes to training (media paths, question, answer text)."""

    video: str | None
    audio: str | None
    question: str
    options: list[str]
    answer: str  # the exact target text, e.g. "B. green"
    context: str | None = None  # text-proxy file for text-only LMs


def _detached(pieces: Iterable[StreamPiece]) -> Iterator[StreamPiece]:
    """Run the adapter's encoders without autograd (frozen encoders: their outputs are constants)."""
    it = iter(pieces)
    while True:
        with torch.no_grad():
            piece = next(it, None)
        if piece is None:
            return
        yield piece


class StreamingObjective(nn.Module):
    """Wraps the trainable model (`inner`) with the streaming engine that drives it."""

    def __init__(self, inner: nn.Module, adapter: ModelAdapter, engine: StreamingEngine, media: MediaConfig,
                 system_prompt: str, checkpoint: bool = True, train_encoders: bool = False):
        super().__init__()
        self.inner = inner  # registered: DeepSpeed/DDP and the optimizer see its parameters
        self.adapter, self.engine, self.media = adapter, engine, media
        self.system_prompt, self.checkpoint, self.train_encoders = system_prompt, checkpoint, train_encoders
        self.last_reports: list[MemoryReport] = []

    def forward(self, examples: list[Example]) -> torch.Tensor:
        losses, self.last_reports = [], []
        for ex in examples:
            loss, report = self.example_loss(ex)
            losses.append(loss)
            self.last_reports.append(report)
        return torch.stack(losses).mean()

    def example_loss(self, ex: Example) -> tuple[torch.Tensor, MemoryReport]:
        ad, engine = self.adapter, self.engine
        media, _ = media_input(ad, self.media, ex.video, ex.audio, ex.context)
        engine.policy.expect(media.expected_tokens)
        prefix, q_ids = split_chat_prompt(ad.tokenizer, self.system_prompt, format_question(ex.question, ex.options))
        a_ids = ad.tokenizer(ex.answer, add_special_tokens=False)["input_ids"] + [ad.tokenizer.eos_token_id]
        pieces = ad.stream(media, prefix)
        if not self.train_encoders:
            pieces = _detached(pieces)
        state, _ = engine.prefill(pieces, checkpoint=self.checkpoint)
        return answer_loss(engine, state, q_ids, a_ids), state.report()
