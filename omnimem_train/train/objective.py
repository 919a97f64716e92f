"""The training objective: the *same* group-wise (compressed) streaming forward as inference,
with gradients through the retained memory into earlier groups, and cross-entropy on the answer
tokens only (METHOD §5). `grad_groups` bounds how far back that gradient reaches: only the stream's
last k groups run with autograd (`StreamingEngine.prefill(grad_groups=k)`), so activation memory
stays flat in the stream's length.

`StreamingObjective` is the module the Trainer (and DeepSpeed/DDP) wraps: its forward takes a batch
of manifest rows and returns the mean loss, so the distributed wrappers see a normal forward call.
Selection indices are not differentiated; encoder outputs are detached unless their tower trains
(`train_encoders`: none | audio | vision | all).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from omnimem_train.config.schema import MediaConfig
from omnimem_train.memory.report import MemoryReport, full_context_report
from omnimem_train.models.base import ModelAdapter, StreamPiece
from omnimem_train.models.prompt import question_prompt
from omnimem_train.streaming.answer import answer_loss
from omnimem_train.streaming.encoder_cache import EncoderCache
from omnimem_train.streaming.engine import StreamingEngine
from omnimem_train.streaming.inputs import media_input
from omnimem_train.train.full_context import Sequence, full_context_loss
from omnimem_train.train.lora import frozen_tower_parts


@dataclass
class Example:
    """What one manifest row contributes to training (media paths, question, answer text)."""

    video: str | None
    audio: str | None
    question: str
    options: list[str]
    answer: str  # the exact target text, e.g. "B. green"
    context: str | None = None  # text-proxy file for text-only LMs


def _detached(pieces: Iterable[StreamPiece], adapter: ModelAdapter) -> Iterator[StreamPiece]:
    """Run the adapter's encoders without autograd (frozen encoders: their outputs are constants);
    text pieces are re-embedded with autograd, since the embedding table may train."""
    it = iter(pieces)
    while True:
        with torch.no_grad():
            piece = next(it, None)
        if piece is None:
            return
        yield adapter.reembed(piece)


class StreamingObjective(nn.Module):
    """Wraps the trainable model (`inner`) with the streaming engine that drives it.

    engine:        the compressed streaming forward; None for `compression: none`, where each batch
                   runs as one packed full-context forward (`train.full_context`): the same loss
                   (tested to 1e-5 against streaming at an unlimited budget), one forward per batch.
    cache:         an `EncoderCache` (the clip is decoded and encoded once; with a trained audio
                   tower its log-mel is kept and re-encoded).
    answer_format: the prompt's answer format (`models.prompt.ANSWER_FORMATS`); the
                   example's `answer` must already be written in that format.
    budget_range: (low, high): each batch streams under a budget_fraction drawn log-uniformly in
                   [low, high] (torch's RNG, so a resumed run draws the same), for one model that
                   works at many budgets; None: the policy's own budget.
    grad_groups:   None (`memory_grad_groups: all`): gradients reach every group through the retained
                   memory. k: only the stream's last k groups (older memory is used detached; see
                   `StreamingEngine.prefill`).
    train_encoders: which towers run with autograd; with "audio" the vision tower runs without it and
                   the audio is re-encoded from the log-mel (`EncoderCache(train_audio=True)`, which
                   keeps nothing when no cache is asked for).
    """

    def __init__(self, inner: nn.Module, adapter: ModelAdapter, engine: StreamingEngine | None, media: MediaConfig,
                 system_prompt: str, checkpoint: bool = True, train_encoders: str = "none", cache: EncoderCache | None = None, answer_format: str = "letter",
                 budget_range: tuple[float, float] | None = None, grad_groups: int | None = None):
        super().__init__()
        if cache is not None and train_encoders in ("vision", "all"):
            raise ValueError("an encoder cache needs a frozen vision tower (train_encoders: none or audio)")
        if cache is not None and cache.train_audio != (train_encoders == "audio"):
            raise ValueError(f"an encoder cache with train_audio={cache.train_audio} cannot serve "
                             f"train_encoders: {train_encoders}")
        if cache is None and train_encoders == "audio":
            cache = EncoderCache(adapter, max_items=0, train_audio=True)
        self.inner = inner  # registered: DeepSpeed/DDP and the optimizer see its parameters
        self.adapter, self.engine, self.media = adapter, engine, media
        self.system_prompt, self.checkpoint, self.train_encoders = system_prompt, checkpoint, train_encoders
        self.cache, self.answer_format = cache, answer_format
        self.budget_range = budget_range
        self.grad_groups = grad_groups
        self.last_reports: list[MemoryReport] = []

    def train(self, mode: bool = True) -> StreamingObjective:
        """Train mode for the model, except the frozen parts of its encoder towers
        (`lora.frozen_tower_parts`), which stay in eval mode: their outputs are constants, no dropout."""
        super().train(mode)
        if mode:
            for part in frozen_tower_parts(self.adapter.model):
                part.eval()
        return self

    def forward(self, examples: list[Example]) -> torch.Tensor:
        """Mean answer loss of `examples`. Questions about the same media (and prompt prefix) share
        one stream: compression never sees the question, so the retained memory is the same for all
        of them; the full-context path packs them after one stream (`train.full_context`)."""
        self.last_reports = []
        streams: dict[tuple, tuple[Example, list[int], list[tuple[list[int], list[int]]]]] = {}
        for ex in examples:
            prefix, q_ids, a_ids = self._prompt(ex)
            key = (ex.video, ex.audio, ex.context, tuple(prefix))
            streams.setdefault(key, (ex, prefix, []))[2].append((q_ids, a_ids))
        if self.engine is None:
            seqs = [Sequence(list(self._stream(ex, prefix)[0]), questions)
                    for ex, prefix, questions in streams.values()]
            for seq in seqs:
                self.last_reports += [self._full_report(seq.pieces)] * len(seq.questions)
            return full_context_loss(self.adapter, seqs)
        if self.budget_range is not None:
            low, high = self.budget_range
            self.engine.policy.set_fraction(low * (high / low) ** float(torch.rand(())))
        losses = []
        for ex, prefix, questions in streams.values():
            pieces = self.engine.start_stream(*self._stream(ex, prefix))
            state, _ = self.engine.prefill(pieces, checkpoint=self.checkpoint, grad_groups=self.grad_groups)
            report = state.report()
            for q_ids, a_ids in questions:  # nothing is committed: each question sees the same memory
                losses.append(answer_loss(self.engine, state, q_ids, a_ids))
                self.last_reports.append(report)
        return torch.stack(losses).mean()

    def _full_report(self, pieces: list[StreamPiece]) -> MemoryReport:
        """Full context keeps the whole stream in every layer (K and V of each kv head)."""
        ad = self.adapter
        k_proj = ad.decoder_layers[0].self_attn.k_proj
        per_token = 2 * k_proj.weight.shape[0] * k_proj.weight.element_size()
        modality = torch.cat([p.modality for p in pieces]) if pieces else torch.zeros(0, dtype=torch.long)
        return full_context_report(modality, len(ad.decoder_layers), per_token)

    def _prompt(self, ex: Example) -> tuple[list[int], list[int], list[int]]:
        """-> (prefix ids, question ids, answer ids + eos): the chat prompt split around the media."""
        tok = self.adapter.tokenizer
        prefix, q_ids = question_prompt(tok, self.system_prompt, ex.question, ex.options, self.answer_format)
        return prefix, q_ids, tok(ex.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

    def _stream(self, ex: Example, prefix: list[int]) -> tuple[Iterable[StreamPiece], dict]:
        """-> (stream pieces of `prefix` + the example's media, expected tokens per modality)."""
        ad = self.adapter

        def load_media():
            return media_input(ad, self.media, ex.video, ex.audio, ex.context)[0]

        if self.cache is not None:
            return self.cache.get((ex.video, ex.audio, ex.context, tuple(prefix)), load_media, prefix)
        media = load_media()
        pieces = ad.stream(media, prefix)
        if self.train_encoders == "none":
            pieces = _detached(pieces, ad)
        return pieces, media.expected_tokens
