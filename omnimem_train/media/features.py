"""Model inputs from decoded media: Qwen2-VL vision patches and Whisper log-mel audio features.

Both match what the official Qwen2.5-Omni processor feeds the thinker, without needing its video
processor (which requires torchvision, unavailable with our pinned torch; see ENVIRONMENT.md §2b):

- `smart_resize` / `patchify`: `pixel_values_videos` (grid_t*grid_h*grid_w, 3*2*14*14) and
  `video_grid_thw` (1, 3).
- `LogMelExtractor`: `input_features` (128, T) at 100 frames/s, in 30-s windows so that audio
  longer than 30 s is kept whole (the official processor truncates it to the first 30 s).
- `audio_tokens_for_frames`: how many audio tokens the Qwen2.5-Omni audio tower makes of T frames.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from omnimem_train.errors import ModelError

# Same values as transformers.image_utils.OPENAI_CLIP_MEAN / OPENAI_CLIP_STD.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 14 * 14 * 4 * 1280
) -> tuple[int, int]:
    """Target (height, width) for a frame: both multiples of `factor`, area within [min_pixels,
    max_pixels], aspect ratio kept as closely as possible.

    Copied from transformers 5.24 `models/qwen2_vl/image_processing_qwen2_vl.py::smart_resize`
    (the same function Qwen2.5-Omni's processors use) so that token counts agree with the official
    processor; tests compare the two on many sizes.
    """
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def patchify(
    frames: np.ndarray | torch.Tensor,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN,
    std: tuple[float, float, float] = OPENAI_CLIP_STD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalize and cut frames into Qwen2-VL vision patches.

    Args:
        frames: uint8 (F, H, W, 3) RGB, F >= 1, H and W multiples of patch_size * merge_size.
            F is padded up to a multiple of `temporal_patch_size` by repeating the last frame,
            as the official video processor does.

    Returns:
        pixel_values: float32 (grid_t * grid_h * grid_w, 3 * temporal_patch_size * patch_size**2),
            rows ordered (t, h-block, w-block, h-in-block, w-in-block) so each run of
            merge_size**2 rows becomes one LLM token after the vision merger.
        grid_thw: int64 (1, 3) = [[grid_t, grid_h, grid_w]], grid_h = H // patch_size.
    """
    x = torch.as_tensor(frames)
    unit = patch_size * merge_size
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3 or x.shape[0] == 0:
        raise ValueError(f"frames must be uint8 (F>=1, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    if x.shape[1] % unit or x.shape[2] % unit:
        raise ValueError(f"frame size {tuple(x.shape[1:3])} is not a multiple of {unit}; use smart_resize")

    # Divide then normalize, in float32, in this order: it reproduces Qwen2VLImageProcessorPil
    # bit for bit (the torchvision path fuses the two and differs in the last ulp).
    x = (x.float() / 255 - torch.tensor(mean)) / torch.tensor(std)
    x = x.permute(0, 3, 1, 2)  # (F, C, H, W)
    if pad := -x.shape[0] % temporal_patch_size:
        x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])

    n_frames, channels, height, width = x.shape
    gt, gh, gw = n_frames // temporal_patch_size, height // patch_size, width // patch_size
    x = x.reshape(
        gt,
        temporal_patch_size,
        channels,
        gh // merge_size,
        merge_size,
        patch_size,
        gw // merge_size,
        merge_size,
        patch_size,
    )
    # -> (gt, gh/m, gw/m, m, m, C, tps, p, p): same axis order as the official processors.
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    pixel_values = x.reshape(gt * gh * gw, channels * temporal_patch_size * patch_size * patch_size)
    return pixel_values, torch.tensor([[gt, gh, gw]], dtype=torch.long)


def audio_tokens_for_frames(t_mel: int) -> int:
    """Audio tokens the Qwen2.5-Omni audio tower emits for `t_mel` mel frames.

    ((t - 1) // 2 + 1 - 2) // 2 + 1: a stride-2 conv, then stride-2 average pooling
    (`Qwen2_5OmniAudioEncoder._get_feat_extract_output_lengths`). At 100 mel frames/s this is
    25 tokens/s: 100 frames -> 25, 3000 (30 s) -> 750. Apply it to each feature sequence handed to
    the tower (e.g. each 30-s window); for window lengths that are multiples of 4 frames the sum over
    windows equals the value for the total.
    """
    return ((t_mel - 1) // 2 + 1 - 2) // 2 + 1


class LogMelExtractor:
    """Whisper log-mel features (128 bins, 16 kHz, hop 160 = 100 frames/s) without truncation.

    `WhisperFeatureExtractor` pads or truncates every call to 30 s, so longer audio is cut into
    consecutive windows and only each window's valid frames are kept. The log-mel dynamic-range
    clamp (max - 8 dB) is therefore per window, as in the official processor for a <= 30-s clip.
    """

    def __init__(self, extractor=None):
        if extractor is None:
            # Imported here: transformers adds ~2 s to import time and only this class needs it.
            from transformers import WhisperFeatureExtractor

            extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000)
        self.extractor = extractor

    @classmethod
    def from_dir(cls, path: str | Path) -> LogMelExtractor:
        """Load the extractor of a checkpoint folder (offline); defaults if it has no preprocessor_config.json."""
        if not (Path(path) / "preprocessor_config.json").is_file():
            return cls()
        from transformers import WhisperFeatureExtractor

        try:
            return cls(WhisperFeatureExtractor.from_pretrained(str(path), local_files_only=True))
        except (OSError, ValueError, TypeError) as e:
            reason = " ".join(str(e).split())
            raise ModelError(
                f"{path}: cannot load preprocessor_config.json as a Whisper feature extractor ({reason})"
            ) from e

    @property
    def sampling_rate(self) -> int:
        return int(self.extractor.sampling_rate)

    @property
    def hop_length(self) -> int:
        return int(self.extractor.hop_length)

    @property
    def n_mels(self) -> int:
        return int(self.extractor.feature_size)

    def iter_windows(
        self, wave: np.ndarray | Iterable[np.ndarray], window_s: float = 30.0
    ) -> Iterator[np.ndarray]:
        """Yield float32 (n_mels, T_i) log-mel features for consecutive `window_s` windows of `wave`.

        wave: float (N,) mono at `sampling_rate`, or an iterator of such chunks (e.g. `iter_audio`),
        consumed lazily: a wave that never needs to be whole in memory. Either way the windows are
        those of the whole (concatenated) wave. T_i = ceil(n_i / hop_length) where n_i is the
        window's sample count, so a 70-s wave gives 3000, 3000 and 1000 frames. Nothing is dropped.
        """
        window = self._window(window_s)
        if isinstance(wave, Iterator):
            return self._windows_from_chunks(wave, window)
        wave = self._mono(wave)
        return (self._features(wave[start : start + window]) for start in range(0, len(wave), window))

    def iter_windows_from_chunks(self, chunks: Iterable[np.ndarray], window_s: float = 30.0) -> Iterator[np.ndarray]:
        """`iter_windows` of the concatenation of `chunks` (float (n,) mono pieces of any lengths),
        holding at most one window of samples; chunks whose lengths are multiples of the window
        (as `iter_audio(path, chunk_s=window_s)` gives) pass through without copying."""
        return self._windows_from_chunks(iter(chunks), self._window(window_s))

    def _window(self, window_s: float) -> int:
        window = round(window_s * self.sampling_rate)
        if not 0 < window <= self.extractor.n_samples:
            raise ValueError(f"window_s must be in (0, {self.extractor.chunk_length}] s, got {window_s}")
        return window

    @staticmethod
    def _mono(wave) -> np.ndarray:
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1:
            raise ValueError(f"wave must be mono (N,), got shape {wave.shape}")
        return wave

    def _windows_from_chunks(self, chunks: Iterator[np.ndarray], window: int) -> Iterator[np.ndarray]:
        buf: list[np.ndarray] = []
        held = 0
        for chunk in chunks:
            chunk = self._mono(chunk)
            if not chunk.size:
                continue
            buf.append(chunk)
            held += len(chunk)
            if held < window:
                continue
            joined = buf[0] if len(buf) == 1 else np.concatenate(buf)
            full = held - held % window
            for start in range(0, full, window):
                yield self._features(joined[start : start + window])
            buf = [joined[full:].copy()] if full < held else []
            held -= full
        if held:
            yield self._features(buf[0] if len(buf) == 1 else np.concatenate(buf))

    def _features(self, samples: np.ndarray) -> np.ndarray:
        """(n_mels, ceil(len / hop_length)) valid log-mel frames of one window of <= 30 s."""
        out = self.extractor(
            samples,
            sampling_rate=self.sampling_rate,
            return_attention_mask=True,
            return_tensors="np",
        )
        n_valid = int(out["attention_mask"][0].sum())
        return np.ascontiguousarray(out["input_features"][0, :, :n_valid], dtype=np.float32)

    def log_mel(self, wave: np.ndarray, window_s: float = 30.0) -> np.ndarray:
        """float32 (n_mels, T) with T = sum of per-window ceil(n_i / hop_length); the windows concatenated."""
        windows = list(self.iter_windows(wave, window_s))
        if not windows:
            return np.zeros((self.n_mels, 0), dtype=np.float32)
        return np.concatenate(windows, axis=1)
