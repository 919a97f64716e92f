"""Read user media files: probe streams, decode video frames lazily, load audio as 16 kHz mono.

PyAV (bundled ffmpeg) decodes containers; plain audio files (wav, flac, ...) go through soundfile
and soxr. Every problem with the input file raises `MediaError` with a one-line message that names
the file.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import soxr

from omnimem_train.errors import ConfigError, MediaError
from omnimem_train.media.features import smart_resize

AUDIO_MODES = ("auto", "required", "off")

# Frame times come from integer pts; allow for their rounding when comparing to k / fps.
_TIME_EPS = 1e-6


class MediaWarning(UserWarning):
    """A media file lacks something optional (e.g. an audio track) and a fallback is used."""


@dataclass(frozen=True)
class MediaInfo:
    """What `probe` found. fps/width/height are None when there is no video stream."""

    path: str
    duration_s: float
    has_video: bool
    has_audio: bool
    fps: float | None
    width: int | None
    height: int | None


def _one_line(e: BaseException) -> str:
    """The reason of an ffmpeg/soundfile error on one line (without the path ffmpeg appends)."""
    reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(str(reason).split())


def _check_file(path: str | Path) -> None:
    p = Path(path)
    if not p.exists():
        raise MediaError(f"{path}: file not found")
    if not p.is_file():
        raise MediaError(f"{path}: not a regular file")
    if p.stat().st_size == 0:
        raise MediaError(f"{path}: empty file (0 bytes)")


def _open(path: str | Path) -> av.container.InputContainer:
    _check_file(path)
    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise MediaError(f"{path}: cannot be decoded as media ({_one_line(e)})") from e


def _stream_duration(container: av.container.InputContainer, stream: av.stream.Stream) -> float | None:
    """Seconds from the stream header, else the container header, else None."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _decoded_end(frames: Iterator[av.frame.Frame], stream: av.stream.Stream) -> float:
    """Fallback when headers carry no duration (raw streams): end time of the last frame. Decodes all."""
    rate = getattr(stream, "average_rate", None) or getattr(stream, "guessed_rate", None)
    end = 0.0
    for frame in frames:
        if stream.type == "audio":
            length = frame.samples / frame.sample_rate
        else:
            length = 1 / float(rate) if rate else 0.0
        start = frame.time if frame.time is not None else end
        end = max(end, start + length)
    return end


def probe(path: str | Path) -> MediaInfo:
    """Streams, duration and frame geometry of a media file; checks that its first frame decodes.

    duration_s is that of the video stream when there is one (the span `iter_frames` samples),
    otherwise that of the audio stream.
    """
    container = _open(path)
    try:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        main = video or audio
        if main is None:
            raise MediaError(f"{path}: no audio or video stream (empty or zero-length media)")
        try:
            frames = container.decode(main)
            first = next(frames, None)
            if first is None:
                raise MediaError(f"{path}: no decodable frames (zero duration)")
            duration = _stream_duration(container, main)
            if duration is None:
                duration = _decoded_end(itertools.chain([first], frames), main)
        except av.FFmpegError as e:
            raise MediaError(f"{path}: cannot be decoded as media ({_one_line(e)})") from e
        if not duration or duration <= 0:
            raise MediaError(f"{path}: zero duration (no decodable frames)")
        rate = (video.average_rate or video.guessed_rate) if video is not None else None
        return MediaInfo(
            path=str(path),
            duration_s=duration,
            has_video=video is not None,
            has_audio=audio is not None,
            fps=float(rate) if rate else None,
            width=video.codec_context.width if video is not None else None,
            height=video.codec_context.height if video is not None else None,
        )
    finally:
        container.close()


def frame_size_for(info: MediaInfo, max_pixels: int, min_pixels: int, factor: int = 28) -> tuple[int, int]:
    """(height, width) to decode `info`'s video at: multiples of `factor`, area in [min_pixels, max_pixels]."""
    if not info.has_video:
        raise MediaError(f"{info.path}: not a video file (no video stream)")
    try:
        return smart_resize(info.height, info.width, factor, min_pixels=min_pixels, max_pixels=max_pixels)
    except ValueError as e:
        raise MediaError(f"{info.path}: unsupported frame size {info.width}x{info.height} ({e})") from e


def iter_frames(path: str | Path, fps: float, height: int, width: int) -> Iterator[np.ndarray]:
    """Sample a video at `fps`, yielding uint8 RGB (height, width, 3) frames, decoded lazily.

    Rule: with D the video duration (`probe(path).duration_s`), exactly ceil(D * fps) frames are
    yielded; frame k (k = 0, 1, ... while k / fps < D) is the first decoded frame whose timestamp
    (relative to the stream start) is >= k / fps. If the stream runs out before that (sampling
    faster than the source near its end), the last decoded frame is repeated. For an 8-fps, 6-s
    source sampled at 2 fps this is the source frames at 0.0, 0.5, ..., 5.5 s: 12 frames.

    The file is probed (and errors raised) at call time; decoding happens as frames are consumed.
    """
    if fps <= 0 or height <= 0 or width <= 0:
        raise ValueError(f"fps, height and width must be positive, got {fps}, {height}, {width}")
    info = probe(path)
    if not info.has_video:
        raise MediaError(f"{path}: not a video file (no video stream)")
    return _sample_frames(path, math.ceil(info.duration_s * fps - _TIME_EPS), fps, height, width)


def _sample_frames(path: str | Path, n_out: int, fps: float, height: int, width: int) -> Iterator[np.ndarray]:
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or fps)
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        k, last = 0, None
        try:
            for i, frame in enumerate(container.decode(stream)):
                t = frame.time - start if frame.time is not None else i / rate
                # Convert only frames that are sampled; the others are decoded (inter-frame
                # codecs need them) but never reach RGB.
                while k < n_out and k / fps <= t + _TIME_EPS:
                    last = frame.to_ndarray(
                        width=width, height=height, format="rgb24", interpolation="BICUBIC"
                    )
                    yield last
                    k += 1
                if k >= n_out:
                    return
        except av.FFmpegError as e:
            raise MediaError(f"{path}: cannot be decoded as media ({_one_line(e)})") from e
        while last is not None and k < n_out:
            yield last.copy()
            k += 1
    finally:
        container.close()


def load_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """The whole audio of `path` as float32 mono (N,) at `sample_rate`; never truncated.

    Plain audio files (anything libsndfile reads: wav, flac, ogg, ...) are read with soundfile,
    mixed to mono and resampled with soxr; other files (mp4, mkv, ...) decode their first audio
    track with PyAV.
    """
    _check_file(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except RuntimeError:  # soundfile's errors: not a format libsndfile reads, so try ffmpeg
        wave = _load_audio_av(path, sample_rate)
    else:
        wave = data.mean(axis=1, dtype=np.float32)
        if rate != sample_rate:
            wave = soxr.resample(wave, rate, sample_rate).astype(np.float32, copy=False)
    if wave.size == 0:
        raise MediaError(f"{path}: empty audio track (0 samples)")
    return wave


def _load_audio_av(path: str | Path, sample_rate: int) -> np.ndarray:
    container = _open(path)
    try:
        if not container.streams.audio:
            raise MediaError(f"{path}: no audio track")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks = []
        try:
            for frame in container.decode(stream):
                chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
            # Flush: the resampler holds back its filter delay until told the input ended.
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
        except av.FFmpegError as e:
            raise MediaError(f"{path}: cannot be decoded as media ({_one_line(e)})") from e
        wave = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        return _trim_codec_padding(wave, _stream_duration(container, stream), stream, sample_rate)
    finally:
        container.close()


def _trim_codec_padding(wave: np.ndarray, duration: float | None, stream, sample_rate: int) -> np.ndarray:
    """Drop the encoder's padding of the last frame (AAC: up to 1023 samples) past the declared end.

    ffmpeg's decoder skips AAC priming but returns the last frame whole; the container's duration
    says where the audio really ends. Only an excess shorter than one codec frame is removed, so a
    wrong header can never cut real audio.
    """
    if not duration:
        return wave
    declared = round(duration * sample_rate)
    frame_size = stream.codec_context.frame_size or 0
    max_pad = math.ceil(frame_size * sample_rate / (stream.codec_context.sample_rate or sample_rate))
    if 0 < len(wave) - declared < max_pad:
        return wave[:declared]
    return wave


def resolve_audio(video_path: str | Path, audio_path: str | Path | None, mode: str) -> np.ndarray | None:
    """The audio to use with `video_path`, as float32 mono (N,) at 16 kHz, or None for video-only.

    mode (config `media.audio`):
      "off": None, even if an audio file is given.
      "required": the separate `audio_path` if given, else the video's track; MediaError if it has none.
      "auto": like "required", but a video without an audio track gives None and one MediaWarning.
    """
    if mode not in AUDIO_MODES:
        raise ConfigError(f"media.audio: unknown mode {mode!r}; expected one of {', '.join(AUDIO_MODES)}")
    if mode == "off":
        return None
    if audio_path is not None:
        return load_audio(audio_path)
    if probe(video_path).has_audio:
        return load_audio(video_path)
    if mode == "required":
        raise MediaError(
            f"{video_path}: no audio track, but audio is required "
            "(set media.audio=auto to fall back to video-only, or pass --audio FILE)"
        )
    warnings.warn(f"{video_path}: no audio track; falling back to video-only", MediaWarning, stacklevel=2)
    return None
