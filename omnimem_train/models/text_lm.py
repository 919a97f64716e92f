"""Generic decoder-only text LM adapter (Llama / Qwen2 / Mistral families).

A text LM has no audio or vision tower, so its "audio-visual" stream is a *text proxy*: the sample
carries time-ordered segments, each labelled VISUAL (e.g. frame captions), AUDIO (e.g. a
transcript) or TEXT (timestamps, delimiters: always kept). This is what lets the same engine,
budgets and scorers run on real pretrained weights (SmolLM2-135M) on a CPU. Positions are plain
1-D RoPE positions, consecutive over the whole sequence.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from omnimem_train.errors import ModelError
from omnimem_train.models.base import MediaInput, ModelAdapter, StreamPiece


class TextLMAdapter(ModelAdapter):
    position_dims = 1

    def __init__(self, model, tokenizer, name: str = "text_lm"):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        inner = model.model
        self.embed_tokens = inner.embed_tokens
        self.decoder_layers, self.final_norm, self.rotary_emb = inner.layers, inner.norm, inner.rotary_emb
        self.lm_head = model.lm_head
        self.backbone = inner

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(ids.to(self.device))

    def stream(self, media: MediaInput, prefix_ids: list[int]) -> Iterator[StreamPiece]:
        if media.frames is not None or media.mel_windows is not None:
            raise ModelError(
                f"{self.name}: a text-only LM cannot take video or audio; give it a text-proxy context instead"
            )
        pos = 0
        if prefix_ids:
            yield self.text_piece(prefix_ids, pos)
            pos += len(prefix_ids)
        for modality, text in media.context:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if not ids:
                continue
            piece = self.text_piece(ids, pos)
            piece.modality[:] = int(modality)
            pos += len(ids)
            yield piece
