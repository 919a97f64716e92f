"""Read user media files: probe streams, decode video frames and 16 kHz mono audio lazily.

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
        return _probe_open(container, path)
    finally:
        container.close()


def _probe_open(container: av.container.InputContainer, path: str | Path) -> MediaInfo:
    """`probe` of an open container."""
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


def decode_ends(path: str | Path, kinds: tuple[str, ...] = ("video", "audio"), seconds: float = 1.0) -> MediaInfo:
    """`probe`, then decode the first and the last `seconds` of the file's first stream of each
    type in `kinds` ("video", "audio") that it has, with one open of the file.

    The end is reached by seeking (decoding resumes at the keyframe before it), so the cost does
    not grow with the duration. MediaError naming the file when a part does not decode, or when
    the decoded stream stops short of its declared end by more than `seconds` / 2 (a truncated
    file). A type the file lacks is not checked: see the returned `MediaInfo`. Without any
    duration in the headers (raw streams, which often cannot seek) `probe` has decoded the main
    stream whole, and that is the check.
    """
    container = _open(path)
    try:
        info = _probe_open(container, path)
        for kind in kinds:
            streams = container.streams.video if kind == "video" else container.streams.audio
            if streams:
                _check_ends(container, streams[0], path, seconds)
        return info
    finally:
        container.close()


def _check_ends(container: av.container.InputContainer, stream: av.stream.Stream, path: str | Path,
                seconds: float) -> None:
    span = "second" if seconds == 1 else f"{seconds:g} s"
    duration = _stream_duration(container, stream)
    if duration is None:  # see decode_ends
        return
    parts = [(f"the first {span} of its {stream.type} stream", 0.0, seconds),
             (f"the last {span} of its {stream.type} stream", max(0.0, duration - seconds), None)]
    for what, at, until in parts:
        try:
            reached = _decode_span(container, stream, at, until)
        except av.FFmpegError as e:
            raise MediaError(f"{path}: cannot decode {what} ({_one_line(e)})") from e
        if reached is None:
            raise MediaError(f"{path}: cannot decode {what} (no frames)")
        if until is None and reached < duration - seconds / 2:
            raise MediaError(f"{path}: cannot decode {what} (decoding stops at {reached:.2f} s of "
                             f"{duration:.2f} s: truncated?)")


def _decode_span(container: av.container.InputContainer, stream: av.stream.Stream, at: float,
                 until: float | None) -> float | None:
    """Seek `stream` to `at` s from its start and decode until a frame starts at `until` s (None:
    to the end). -> end of the last decoded frame in s from the stream start, None if none decoded."""
    start = stream.start_time * stream.time_base if stream.start_time is not None else 0
    container.seek(math.floor((start + at) / stream.time_base), stream=stream)
    rate = getattr(stream, "average_rate", None) or getattr(stream, "guessed_rate", None)
    reached = None
    for frame in container.decode(stream):
        # An untimed frame follows the previous one.
        t = frame.time - float(start) if frame.time is not None else at if reached is None else reached
        length = frame.samples / frame.sample_rate if stream.type == "audio" else 1 / float(rate) if rate else 0.0
        reached = t + length if reached is None else max(reached, t + length)
        if until is not None and t >= until:
            break
    return reached


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

    The concatenation of `iter_audio(path, sample_rate)`; prefer that for long files (it keeps
    one chunk in memory instead of the whole track).
    """
    chunks = list(iter_audio(path, sample_rate))
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


def iter_audio(path: str | Path, sample_rate: int = 16000, chunk_s: float = 30.0) -> Iterator[np.ndarray]:
    """The audio of `path` as float32 mono chunks at `sample_rate`, decoded incrementally.

    Every chunk holds exactly round(chunk_s * sample_rate) samples except the last, which may be
    shorter; concatenated they are the whole track, never truncated, sample for sample what one
    decode of the whole file gives. Memory stays O(one chunk) whatever the duration.

    Plain audio files (anything libsndfile reads: wav, flac, ogg, ...) are read with soundfile in
    blocks, mixed to mono and resampled with a streaming soxr resampler; other files (mp4, mkv, ...)
    decode their first audio track with PyAV. The file is opened and checked (MediaError naming
    it: missing, undecodable, no audio track, 0 samples) at call time; decoding happens as chunks
    are consumed.
    """
    if sample_rate <= 0 or chunk_s <= 0:
        raise ValueError(f"sample_rate and chunk_s must be positive, got {sample_rate}, {chunk_s}")
    chunk = round(chunk_s * sample_rate)
    if chunk < 1:
        raise ValueError(f"chunk_s * sample_rate must be at least one sample, got {chunk_s} * {sample_rate}")
    _check_file(path)
    chunks = _audio_chunks(path, sample_rate, chunk)
    next(chunks)  # run the opening checks now, not at the first chunk
    return chunks


# Frames per soundfile read: ~1.5 s at 44.1 kHz, whatever the file's length.
_SF_BLOCK = 1 << 16


def _audio_chunks(path: str | Path, sample_rate: int, chunk: int) -> Iterator[np.ndarray | None]:
    """Primed generator: first yields None once the file is open and checked, then the chunks."""
    try:
        snd = sf.SoundFile(str(path))
    except RuntimeError:  # soundfile's errors: not a format libsndfile reads, so try ffmpeg
        pieces = _av_pieces(path, sample_rate)
    else:
        pieces = _sf_pieces(path, snd, sample_rate)
    try:
        next(pieces)  # opening checks
        yield None
        # Each chunk is filled in place as pieces arrive, so the pieces never pile up: the
        # generator holds one chunk (plus one decoded piece), whatever the duration.
        out, fill, total = np.empty(chunk, np.float32), 0, 0
        for piece in pieces:
            total += len(piece)
            while len(piece):
                take = min(chunk - fill, len(piece))
                out[fill : fill + take] = piece[:take]
                piece, fill = piece[take:], fill + take
                if fill == chunk:
                    yield out
                    out, fill = np.empty(chunk, np.float32), 0
        if fill:
            yield out[:fill].copy()
        if not total:
            raise MediaError(f"{path}: empty audio track (0 samples)")
    finally:
        pieces.close()


def _sf_pieces(path: str | Path, snd: sf.SoundFile, sample_rate: int) -> Iterator[np.ndarray | None]:
    """Primed generator over a libsndfile file: None after the checks, then mono float32 pieces."""
    with snd:
        if snd.frames == 0:
            raise MediaError(f"{path}: empty audio track (0 samples)")
        rate = snd.samplerate
        resampler = (
            soxr.ResampleStream(rate, sample_rate, 1, dtype="float32", quality="HQ") if rate != sample_rate else None
        )
        yield None
        try:
            while True:
                data = snd.read(_SF_BLOCK, dtype="float32", always_2d=True)
                last = len(data) < _SF_BLOCK
                wave = data.mean(axis=1, dtype=np.float32)
                if resampler is not None:
                    # The stream gives exactly what one soxr.resample of the whole file gives.
                    wave = resampler.resample_chunk(wave, last=last)
                yield wave
                if last:
                    return
        except RuntimeError as e:
            raise MediaError(f"{path}: cannot be decoded as audio ({_one_line(e)})") from e


def _av_pieces(path: str | Path, sample_rate: int) -> Iterator[np.ndarray | None]:
    """Primed generator over a container's first audio track: None after the checks (first frame
    decoded), then mono float32 pieces, the codec's end padding trimmed (`_codec_trim_length`).

    The padding can only be known at the end, so samples that the trim may still drop (past the
    declared end, by less than one codec frame) are held back until the stream ends.
    """
    container = _open(path)
    try:
        if not container.streams.audio:
            raise MediaError(f"{path}: no audio track")
        stream = container.streams.audio[0]
        duration = _stream_duration(container, stream)
        declared = round(duration * sample_rate) if duration else None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        try:
            frames = container.decode(stream)
            first = next(frames, None)
        except av.FFmpegError as e:
            raise MediaError(f"{path}: cannot be decoded as media ({_one_line(e)})") from e
        if first is None:
            raise MediaError(f"{path}: empty audio track (0 samples)")
        yield None

        pending: list[np.ndarray] = []  # decoded, not yet yielded
        total = sent = 0  # samples decoded / yielded

        def release(upto: int) -> Iterator[np.ndarray]:
            nonlocal sent
            while pending and sent < upto:
                piece = pending[0]
                take = min(len(piece), upto - sent)
                if take == len(piece):
                    pending.pop(0)
                else:
                    pending[0] = piece[take:]
                    piece = piece[:take]
                sent += take
                yield piece

        try:
            for frame in itertools.chain([first], frames):
                for out in resampler.resample(frame):
                    piece = out.to_ndarray().reshape(-1)
                    pending.append(piece)
                    total += len(piece)
                if declared is None or total - declared >= _max_codec_pad(stream, sample_rate):
                    safe = total  # no trim possible any more (the total only grows)
                else:
                    safe = min(total, declared)  # samples before the declared end are never trimmed
                yield from release(safe)
            # Flush: the resampler holds back its filter delay until told the input ended.
            for out in resampler.resample(None):
                piece = out.to_ndarray().reshape(-1)
                pending.append(piece)
                total += len(piece)
        except av.FFmpegError as e:
            raise MediaError(f"{path}: cannot be decoded as media ({_one_line(e)})") from e
        keep = _codec_trim_length(total, duration, stream, sample_rate)
        if keep == 0:
            raise MediaError(f"{path}: empty audio track (0 samples)")
        yield from release(keep)
    finally:
        container.close()


def _max_codec_pad(stream, sample_rate: int) -> int:
    """Most samples (at `sample_rate`) of encoder padding one codec frame can hold; 0 if unknown."""
    frame_size = stream.codec_context.frame_size or 0
    return math.ceil(frame_size * sample_rate / (stream.codec_context.sample_rate or sample_rate))


def _codec_trim_length(total: int, duration: float | None, stream, sample_rate: int) -> int:
    """How many of `total` decoded samples to keep: drop the encoder's padding of the last frame
    (AAC: up to 1023 samples) past the declared end.

    ffmpeg's decoder skips AAC priming but returns the last frame whole; the container's duration
    says where the audio really ends. Only an excess shorter than one codec frame is removed, so a
    wrong header can never cut real audio.
    """
    if not duration:
        return total
    declared = round(duration * sample_rate)
    if 0 < total - declared < _max_codec_pad(stream, sample_rate):
        return declared
    return total


def resolve_audio_source(video_path: str | Path, audio_path: str | Path | None, mode: str) -> Path | None:
    """Which file to read the audio of `video_path` from, or None for video-only.

    mode (config `media.audio`):
      "off": None, even if an audio file is given.
      "required": the separate `audio_path` if given, else the video (if it has an audio track);
        MediaError if it has none.
      "auto": like "required", but a video without an audio track gives None and one MediaWarning.

    Read the audio with `iter_audio` (lazily) or `load_audio`.
    """
    if mode not in AUDIO_MODES:
        raise ConfigError(f"media.audio: unknown mode {mode!r}; expected one of {', '.join(AUDIO_MODES)}")
    if mode == "off":
        return None
    if audio_path is not None:
        _check_file(audio_path)
        return Path(audio_path)
    if probe(video_path).has_audio:
        return Path(video_path)
    if mode == "required":
        raise MediaError(
            f"{video_path}: no audio track, but audio is required "
            "(set media.audio=auto to fall back to video-only, or pass --audio FILE)"
        )
    warnings.warn(f"{video_path}: no audio track; falling back to video-only", MediaWarning, stacklevel=2)
    return None


def check_sources(video: str | Path | None, audio: str | Path | None, audio_mode: str, seconds: float = 1.0) -> None:
    """Check, without decoding them whole, the files a stream of (`video`, `audio`) reads under
    media.audio=`audio_mode`: each opens, has the streams it is read for (a video stream; the audio
    track `resolve_audio_source` picks, if any) and decodes at both ends (`decode_ends`).

    Without a video, `audio` alone is read, whatever the mode. MediaError "video: <problem>" or
    "audio: <problem>", naming the argument whose file fails.
    """
    if audio_mode not in AUDIO_MODES:
        raise ConfigError(f"media.audio: unknown mode {audio_mode!r}; expected one of {', '.join(AUDIO_MODES)}")
    own_track = video is not None and audio is None and audio_mode != "off"
    checks = []
    if video is not None:
        checks.append(("video", video, ("video", "audio") if own_track else ("video",)))
    if audio is not None and (video is None or audio_mode != "off"):
        checks.append(("audio", audio, ("audio",)))
    for field, path, kinds in checks:
        try:
            info = decode_ends(path, kinds, seconds)
            if field == "video" and not info.has_video:
                raise MediaError(f"{path}: not a video file (no video stream)")
            if field == "audio" and not info.has_audio:
                raise MediaError(f"{path}: no audio track")
            if own_track and not info.has_audio and audio_mode == "required":
                resolve_audio_source(video, None, audio_mode)  # its error: audio required, none found
        except MediaError as e:
            raise MediaError(f"{field}: {e}") from e
