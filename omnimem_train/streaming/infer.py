"""One question about one stream: prefill under a memory policy, then answer or score options."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from omnimem_train.memory.report import MemoryReport
from omnimem_train.models.base import MediaInput
from omnimem_train.models.prompt import LETTERS, option_text, question_prompt
from omnimem_train.streaming.answer import iter_generate, iter_text, score_options
from omnimem_train.streaming.engine import StreamingEngine, StreamState

if TYPE_CHECKING:
    from omnimem_train.train.encoder_cache import EncoderCache


@dataclass
class InferResult:
    answer: str
    report: MemoryReport  # memory as the stream left it, before the question
    stream_seconds: float  # wall time of the streaming prefill
    option_scores: list[float] | None = None
    choice: str | None = None

    def to_dict(self) -> dict:
        return {"answer": self.answer, "choice": self.choice, "option_scores": self.option_scores,
                "stream_seconds": self.stream_seconds, "memory": self.report.to_dict()}


@torch.no_grad()
def answer_question(engine: StreamingEngine, media: MediaInput, question: str, options: list[str] | None = None,
                    system_prompt: str = "", max_new_tokens: int = 32,
                    on_group: Callable[[StreamState, int], None] | None = None,
                    on_text: Callable[[str], None] | None = None, answer_format: str = "letter",
                    cache: EncoderCache | None = None, cache_key: tuple | None = None) -> InferResult:
    """Stream `media`, then answer. With `options`, each option's text is scored by log-likelihood
    and the best letter is the answer; otherwise greedy decoding, streamed through `on_text`.
    `answer_format` (`prompt.ANSWER_FORMATS`) must match the training target. `cache` (with the
    media's `cache_key`): the encoded stream is taken from it, or encoded once and kept there (an
    evaluation grid streams every sample under many memory settings; the towers' output is the same)."""
    ad = engine.adapter
    prefix, q_ids = question_prompt(ad.tokenizer, system_prompt, question, options, answer_format)
    t0 = time.perf_counter()
    if cache is not None:
        stream, expected = cache.get((cache_key, tuple(prefix)), lambda: media, prefix)
    else:
        stream, expected = ad.stream(media, prefix), media.expected_tokens
    pieces = engine.start_stream(stream, expected)
    state, _ = engine.prefill(pieces, on_group=on_group)
    seconds = time.perf_counter() - t0
    report = state.report()
    if options:
        opts = [ad.tokenizer(option_text(options, i, answer_format), add_special_tokens=False)["input_ids"]
                for i in range(len(options))]
        scores = score_options(engine, state, q_ids, opts)
        best = max(range(len(options)), key=scores.__getitem__)
        return InferResult(f"{LETTERS[best]}. {options[best]}", report, seconds, scores, LETTERS[best])
    ids: list[int] = []
    for text in iter_text(ad.tokenizer, iter_generate(engine, state, q_ids, max_new_tokens, ad.eos_token_ids), ids):
        if on_text is not None:
            on_text(text)
    return InferResult(ad.tokenizer.decode(ids, skip_special_tokens=True), report, seconds)
