"""A model loaded to serve: its serving config (the settings saved next to it: memory and the prompt
it was trained on, then the caller's), its adapter and the engine that config describes.
`omnimem-train infer` and the Python session API (`open_session`) load through here."""

from __future__ import annotations

import logging

from omnimem_train.config.load import load_serving_config
from omnimem_train.models.load import load_configured_adapter
from omnimem_train.streaming.engine import StreamingEngine
from omnimem_train.streaming.session import StreamSession

log = logging.getLogger(__name__)


def load_engine(cfg) -> StreamingEngine:
    """Load the model `cfg` names and build the engine `cfg.memory` describes."""
    return StreamingEngine.from_config(load_configured_adapter(cfg), cfg.memory)


def open_session(model: str, *, video: bool = True, audio: bool | None = None, audio_window_s: float = 30.0,
                 stream_tokens: int | None = None, **settings) -> StreamSession:
    """A live `StreamSession` over `model` (a model directory or builtin:<name>) with the settings
    saved next to it (memory, and the answer format and system prompt it was trained on; as
    `omnimem-train infer` uses them), then `settings` on top: config keys as a recipe would set them,
    e.g. `memory={"scorer": "omnimem", "budget": 256}, device="cpu"`."""
    cfg, note = load_serving_config(settings={"model_name_or_path": model, **settings})
    if note:
        log.info(note)
    gen = cfg.generation
    session = StreamSession(load_engine(cfg), cfg.media, system_prompt=gen.system_prompt,
                            answer_format=gen.answer_format, max_new_tokens=gen.max_new_tokens, video=video,
                            audio=audio, audio_window_s=audio_window_s, stream_tokens=stream_tokens)
    session.config, session.settings_note = cfg, note
    return session
