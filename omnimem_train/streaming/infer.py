"""One question about one stream: prefill under a memory policy, then answer or score options."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from omnimem_train.models.base import MediaInput
from omnimem_train.models.prompt import split_chat_prompt
from omnimem_train.streaming.answer import Answer, ask
from omnimem_train.streaming.encoder_cache import EncoderCache
from omnimem_train.streaming.engine import StreamingEngine, StreamState


@torch.no_grad()
def answer_question(engine: StreamingEngine, media: MediaInput, question: str, options: list[str] | None = None,
                    system_prompt: str = "", max_new_tokens: int = 32,
                    on_group: Callable[[StreamState, int], None] | None = None,
                    on_text: Callable[[str], None] | None = None, answer_format: str = "letter",
                    cache: EncoderCache | None = None, cache_key: tuple | None = None) -> Answer:
    """Stream `media`, then `ask`; the answer is complete on return (a generated answer's text pieces
    went through `on_text` as they were generated). `cache` (with the media's `cache_key`): the encoded stream is
    taken from it, or encoded once and kept there (an evaluation grid streams every sample under many
    memory settings; the towers' output is the same)."""
    ad = engine.adapter
    prefix, _ = split_chat_prompt(ad.tokenizer, system_prompt, "", answer_format)
    t0 = time.perf_counter()
    if cache is not None:
        stream, expected = cache.get((cache_key, tuple(prefix)), lambda: media, prefix)
    else:
        stream, expected = ad.stream(media, prefix), media.expected_tokens
    state, _ = engine.prefill(engine.start_stream(stream, expected), on_group=on_group)
    result = ask(engine, state, question, options, system_prompt=system_prompt, answer_format=answer_format,
                 max_new_tokens=max_new_tokens, stream_seconds=time.perf_counter() - t0)
    for text in result:
        if on_text is not None and not options:
            on_text(text)
    return result
