"""Verification probe: the logits a model adapter gives one short, deterministic input.

For an adapter that takes media (`takes_media`: the Qwen2.5-Omni thinker, the video-SALMONN 2+
family) the probe is a 2-second audio-visual stream (4 seeded random frames at 2 fps, each side twice
the adapter's `frame_multiple`: 56x56 for Omni and Qwen2.5-VL, 64x64 for Qwen3-VL; 200 seeded random
log-mel frames with the bins of the adapter's `feature_extractor()`) between a text prefix and a
question that continues at the stream's `next_pos`, laid out by the adapter exactly as inference
lays it out; for text LMs it is a text-proxy stream. The whole sequence runs as one uncompressed
forward with the stream's `layer_adds` (DeepStack), so encoders, projections and every decoder layer
count.
"""

from __future__ import annotations

import numpy as np
import torch

from omnimem_train.models.base import MediaInput, Modality, ModelAdapter, StreamPiece

PREFIX = "<|im_start|>system\nYou watch and listen.<|im_end|>\n<|im_start|>user\n"
QUESTION = "What happened, and which sound was heard first?<|im_end|>\n<|im_start|>assistant\nThe"
CONTEXT = [(Modality.VISUAL, "a red square slides left"), (Modality.AUDIO, "a high tone, then silence"),
           (Modality.VISUAL, "a blue circle appears")]
FRAMES, FPS, MEL_FRAMES, SEED = 4, 2.0, 200, 0


def probe_media(adapter: ModelAdapter) -> MediaInput:
    """A fresh (iterators are consumed) deterministic probe input for `adapter`."""
    if not adapter.takes_media:  # text LM: a text-proxy stream
        return MediaInput(context=list(CONTEXT))
    rng = np.random.default_rng(SEED)
    size = 2 * adapter.frame_multiple
    frames = rng.integers(0, 256, size=(FRAMES, size, size, 3), dtype=np.uint8)
    n_mels = int(adapter.feature_extractor().extractor.feature_size)
    mel = rng.standard_normal((n_mels, MEL_FRAMES)).astype(np.float32) * 0.5
    return MediaInput(frames=iter(list(frames)), fps=FPS, mel_windows=iter([mel]), duration_s=FRAMES / FPS)


@torch.no_grad()
def probe_logits(adapter: ModelAdapter) -> torch.Tensor:
    """(1, L, V) fp32 logits of the probe sequence (L = prefix + stream + question tokens)."""
    tok = adapter.tokenizer
    prefix = tok(PREFIX, add_special_tokens=False)["input_ids"]
    pieces = [p for p in adapter.stream(probe_media(adapter), prefix) if len(p)]
    pieces.append(adapter.text_piece(tok(QUESTION, add_special_tokens=False)["input_ids"], pieces[-1].next_pos()))
    seq = StreamPiece.cat(pieces)
    mask = torch.ones(1, len(seq), dtype=torch.long, device=adapter.device)
    adds = None if seq.layer_adds is None else seq.layer_adds.unsqueeze(1)  # (K, 1, L, D)
    hidden = adapter.decoder_hidden(seq.embeds.unsqueeze(0), seq.positions.unsqueeze(1), mask, adds)  # (1, L, D)
    return adapter.lm_head(hidden).float()


def max_abs_diff(reference: torch.Tensor, exported: torch.Tensor) -> float:
    """max |reference - exported| over (1, L, V) logits; inf when the shapes differ."""
    if reference.shape != exported.shape:
        return float("inf")
    return float((reference - exported).abs().max())
