"""Small materialised streams for memory tests: a tiny Omni audio+video clip and a text-proxy one."""

import numpy as np
import torch

from omnimem_train.models.base import MediaInput, Modality
from omnimem_train.models.prompt import split_chat_prompt


def random_media(seconds, size=56, seed=0):
    """Random uint8 frames (2 fps, size x size) and a (128, 100/s) log-mel for `seconds`, from one seed."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (int(seconds * 2), size, size, 3), dtype=np.uint8)
    mel = rng.standard_normal((128, int(seconds * 100))).astype(np.float32)
    return frames, mel


def omni_pieces(ad, seconds=6.0, size=112, seed=0, audio=True, video=True):
    """6 s at 2 fps, 112 px: 16 visual tokens per grid (96 in all) and 150 audio tokens."""
    frames, mel = random_media(seconds, size, seed)
    frames, mel = (frames if video else None), (mel if audio else None)
    prefix, _ = split_chat_prompt(ad.tokenizer, "You watch.", "q")
    media = MediaInput(frames=iter(frames) if video else None, fps=2.0, mel_windows=iter([mel]) if audio else None,
                       duration_s=seconds)
    with torch.no_grad():
        return list(ad.stream(media, prefix))


def text_pieces(ad, steps=12):
    """Text-proxy stream: per step a timestamp (TEXT), a caption (VISUAL) and a sound line (AUDIO)."""
    ctx = []
    for t in range(steps):
        ctx += [(Modality.TEXT, f"[{t}s]"), (Modality.VISUAL, f" frame {t}: the square moves left and turns blue"),
                (Modality.AUDIO, f" tone {t % 3}")]
    prefix, _ = split_chat_prompt(ad.tokenizer, "You read.", "q")
    with torch.no_grad():
        return list(ad.stream(MediaInput(context=ctx), prefix))
