"""Turn user files into a lazily decoded `MediaInput` for an adapter.

Video frames are decoded at the configured fps and size as the stream consumes them; audio
(the video's own track, or a separate file) is decoded 30 s at a time as it is consumed and becomes
30-s log-mel windows, none truncated: memory does not grow with the media's duration.
Text-only LMs take a *text-proxy* context file instead: one segment per line, optionally
prefixed `visual:`, `audio:` or `text:` (unprefixed lines are compressible context, counted as
visual).
"""

from __future__ import annotations

import math
from pathlib import Path

from omnimem_train.config.schema import MediaConfig
from omnimem_train.errors import MediaError, ModelError
from omnimem_train.media.decode import frame_size_for, iter_audio, iter_frames, probe, resolve_audio_source
from omnimem_train.models.base import MediaInput, Modality, ModelAdapter

_PREFIXES = {"visual:": Modality.VISUAL, "audio:": Modality.AUDIO, "text:": Modality.TEXT}


def media_input(adapter: ModelAdapter, cfg: MediaConfig, video: str | None = None, audio: str | None = None,
                context: str | None = None) -> tuple[MediaInput, int]:
    """-> (MediaInput, estimated audio+visual stream tokens). `MediaInput.expected_tokens` holds the
    per-modality estimate (progress bars; frame dropping spaces its kept steps by it)."""
    if context is not None:
        if video or audio:
            raise MediaError(f"{context}: give either a text-proxy context or video/audio, not both")
        segments = read_context(context)
        counts = dict.fromkeys((Modality.AUDIO, Modality.VISUAL), 0)
        for modality, text in segments:
            if modality in counts:
                counts[modality] += len(adapter.tokenizer(text, add_special_tokens=False)["input_ids"])
        return MediaInput(context=segments, expected_tokens=counts), sum(counts.values())
    if not adapter.takes_media:
        raise ModelError(f"{adapter.name}: a text-only LM cannot take video or audio; pass --context FILE")
    if video is None and audio is None:
        raise MediaError("no input: pass --video FILE and/or --audio FILE")
    mel = adapter.feature_extractor()
    if video is None:
        # Probe first (its duration feeds the estimate); iter_audio then checks the file eagerly.
        seconds = probe(audio).duration_s
        windows = mel.iter_windows(iter_audio(audio))
        est = adapter.audio_tokens(max(1, math.ceil(seconds * 100)))
        return MediaInput(mel_windows=windows, duration_s=seconds, expected_tokens={Modality.AUDIO: est}), est
    info = probe(video)
    if not info.has_video:
        raise MediaError(f"{video}: not a video file (no video stream)")
    h, w = frame_size_for(info, cfg.max_pixels, cfg.min_pixels, adapter.frame_multiple)
    source = resolve_audio_source(video, audio, cfg.audio)
    chunks = iter_audio(source) if source is not None else None
    frames = iter_frames(video, cfg.video_fps, h, w)
    n_frames = math.ceil(info.duration_s * cfg.video_fps)
    expected = {Modality.VISUAL: adapter.visual_tokens(n_frames, h, w), Modality.AUDIO: 0}
    windows = None
    if chunks is not None:
        windows = mel.iter_windows(chunks)
        seconds = info.duration_s if audio is None else probe(source).duration_s
        expected[Modality.AUDIO] = adapter.audio_tokens(max(1, math.ceil(seconds * mel.sampling_rate / mel.hop_length)))
    media = MediaInput(frames=frames, fps=cfg.video_fps, mel_windows=windows, duration_s=info.duration_s,
                       expected_tokens=expected)
    return media, sum(expected.values())


def read_context(path: str) -> list[tuple[Modality, str]]:
    """Text-proxy segments from a UTF-8 file, one per non-empty line."""
    p = Path(path)
    if not p.is_file():
        raise MediaError(f"{path}: file not found")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise MediaError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from e
    segments = []
    for line in lines:
        if not line.strip():
            continue
        label = next((m for pre, m in _PREFIXES.items() if line.lower().startswith(pre)), None)
        text = line.split(":", 1)[1] if label is not None else line
        segments.append((label if label is not None else Modality.VISUAL, " " + text.strip() + "\n"))
    if not segments:
        raise MediaError(f"{path}: empty context file")
    return segments
