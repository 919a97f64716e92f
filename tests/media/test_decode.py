"""Probe, frame sampling, audio loading and error messages on real files written by data_prep.synthetic."""

import inspect
import math
import tracemalloc
import warnings

import av
import numpy as np
import pytest
import soundfile as sf
import soxr

from data_prep.synthetic import write_clip, write_wav
from omnimem_train.errors import ConfigError, MediaError
from omnimem_train.media.decode import (
    MediaInfo,
    MediaWarning,
    check_sources,
    decode_ends,
    frame_size_for,
    iter_audio,
    iter_frames,
    load_audio,
    probe,
    resolve_audio_source,
)
from omnimem_train.media.features import LogMelExtractor, audio_tokens_for_frames
from tests.media.bad_media import garbage, truncated

SR = 16000


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """6 s, 8 fps, 112x112 H.264 + AAC mono 16 kHz."""
    return write_clip(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=6, fps=8)


@pytest.fixture(scope="module")
def silent_clip(tmp_path_factory):
    """6 s video-only mp4."""
    return write_clip(tmp_path_factory.mktemp("media") / "silent.mp4", seconds=6, fps=8, audio=False)


def assert_one_line_error(excinfo, path):
    message = str(excinfo.value)
    assert str(path) in message
    assert "\n" not in message


def test_probe_reports_streams_duration_and_size(clip):
    assert probe(clip) == MediaInfo(str(clip), 6.0, True, True, 8.0, 112, 112)


def test_probe_video_only(silent_clip):
    info = probe(silent_clip)
    assert (info.has_video, info.has_audio, info.duration_s) == (True, False, 6.0)


def test_iter_frames_samples_at_fps_and_resizes(clip):
    frames = iter_frames(clip, fps=2, height=56, width=84)
    assert inspect.isgenerator(frames)  # lazy: nothing decoded until consumed
    frames = list(frames)
    assert len(frames) == 12
    assert all(f.shape == (56, 84, 3) and f.dtype == np.uint8 for f in frames)


def test_iter_frames_rule_picks_source_frames_at_k_over_fps(clip):
    every = list(iter_frames(clip, fps=8, height=112, width=112))
    assert len(every) == 48
    sampled = list(iter_frames(clip, fps=2, height=112, width=112))
    # 8-fps source sampled at 2 fps: frame k is the source frame at k/2 s, i.e. source index 4k.
    for got, want in zip(sampled, every[::4]):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("fps", [0.5, 3, 10, 16])
def test_iter_frames_count_is_ceil_duration_times_fps(clip, fps):
    frames = list(iter_frames(clip, fps=fps, height=28, width=28))
    assert len(frames) == math.ceil(6 * fps)


def test_iter_frames_upsampling_repeats_last_frame_at_the_end(clip):
    frames = list(iter_frames(clip, fps=10, height=28, width=28))
    np.testing.assert_array_equal(frames[-1], frames[-2])  # 5.9 s is past the last source frame (5.875 s)


def test_raw_stream_without_duration_header_is_measured_by_decoding(tmp_path):
    path = tmp_path / "raw.h264"
    with av.open(str(path), "w", format="h264") as container:  # elementary stream: no durations, no pts
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * i, np.uint8), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    info = probe(path)
    assert info.fps == 25.0  # ffmpeg's assumed rate for untimed H.264
    assert info.duration_s == pytest.approx(10 / 25)
    assert len(list(iter_frames(path, 10, 28, 28))) == 4
    assert decode_ends(path) == info  # untimed frames are decoded too


def test_frame_size_for_uses_smart_resize(clip):
    info = probe(clip)
    assert frame_size_for(info, max_pixels=56 * 56, min_pixels=28 * 28) == (56, 56)
    assert frame_size_for(info, max_pixels=1280 * 28 * 28, min_pixels=56 * 56) == (112, 112)


def test_load_audio_from_mp4_has_full_length(clip):
    wave = load_audio(clip)
    assert wave.dtype == np.float32 and wave.ndim == 1
    # AAC pads its last 1024-sample frame; the declared duration trims it back exactly.
    assert len(wave) == 6 * SR
    assert 0.2 < np.abs(wave).max() < 0.5


def test_load_audio_resamples_44k_aac(tmp_path):
    path = write_clip(tmp_path / "a44.mp4", seconds=3, sample_rate=44100)
    assert abs(len(load_audio(path)) - 3 * SR) <= math.ceil(1024 * SR / 44100)


def test_load_audio_from_wav_mixes_and_resamples(tmp_path):
    assert len(load_audio(write_wav(tmp_path / "a.wav", 2.5))) == 40000
    stereo = np.stack([np.ones(44100), -np.ones(44100)], axis=1) * 0.25
    sf.write(tmp_path / "stereo.wav", stereo, 44100)
    wave = load_audio(tmp_path / "stereo.wav")
    assert len(wave) == SR
    assert np.abs(wave).max() < 1e-3  # the channels cancel when mixed to mono


@pytest.mark.parametrize("kind", ["wav", "mp4"])
def test_audio_longer_than_30s_is_kept_whole(tmp_path, kind):
    if kind == "wav":
        path = write_wav(tmp_path / "long.wav", 65)
    else:
        path = write_clip(tmp_path / "long.mp4", 65, width=32, height=32, fps=2)
    wave = load_audio(path)
    assert len(wave) == 65 * SR
    mel = LogMelExtractor().log_mel(wave)
    assert mel.shape == (128, 6500)  # windows of 3000 + 3000 + 500 frames
    assert audio_tokens_for_frames(mel.shape[1]) == 1625


def resolve_audio(video_path, audio_path, mode):
    """The whole audio track to use with `video_path` (float32 mono, 16 kHz), or None for video-only."""
    source = resolve_audio_source(video_path, audio_path, mode)
    return None if source is None else load_audio(source)


def test_resolve_audio_modes(clip, silent_clip, tmp_path):
    assert len(resolve_audio(clip, None, "auto")) == 6 * SR
    assert resolve_audio(clip, None, "off") is None
    separate = write_wav(tmp_path / "other.wav", 2)
    assert len(resolve_audio(silent_clip, separate, "required")) == 2 * SR


def test_resolve_audio_required_without_track_names_file(silent_clip):
    with pytest.raises(MediaError, match="no audio track") as excinfo:
        resolve_audio(silent_clip, None, "required")
    assert_one_line_error(excinfo, silent_clip)
    assert "media.audio=auto" in str(excinfo.value) and "--audio" in str(excinfo.value)


def test_resolve_audio_auto_without_track_warns_once_and_returns_none(silent_clip):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_audio(silent_clip, None, "auto") is None
    assert len(caught) == 1 and issubclass(caught[0].category, MediaWarning)
    assert str(silent_clip) in str(caught[0].message) and "video-only" in str(caught[0].message)


def test_resolve_audio_rejects_unknown_mode(clip):
    with pytest.raises(ConfigError, match="media.audio"):
        resolve_audio(clip, None, "sometimes")


def _text_as_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("these are meeting notes, not a video\n" * 20)
    return path


def _empty(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    return path


def _zero_sample_wav(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, np.float32), SR)
    return path


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda tmp: tmp / "missing.mp4", "file not found"),
        (_text_as_mp4, "cannot be decoded as media"),
        (_empty, "empty file"),
        (_zero_sample_wav, "zero duration"),
    ],
)
def test_bad_files_raise_one_line_media_error(tmp_path, make, reason):
    path = make(tmp_path)
    # iter_audio checks the file when called, before any chunk is asked for.
    for read in (probe, load_audio, iter_audio, lambda p: iter_frames(p, 2, 28, 28)):
        with pytest.raises(MediaError) as excinfo:
            read(path)
        assert_one_line_error(excinfo, path)
    with pytest.raises(MediaError, match=reason):
        probe(path)


def test_iter_frames_on_audio_file_says_not_a_video(tmp_path):
    path = write_wav(tmp_path / "a.wav", 1)
    with pytest.raises(MediaError, match="not a video file") as excinfo:
        iter_frames(path, 2, 28, 28)
    assert_one_line_error(excinfo, path)


def test_load_audio_without_track_names_file(silent_clip):
    with pytest.raises(MediaError, match="no audio track") as excinfo:
        load_audio(silent_clip)
    assert_one_line_error(excinfo, silent_clip)


def test_iter_audio_without_track_fails_at_call(silent_clip):
    with pytest.raises(MediaError, match="no audio track") as excinfo:
        iter_audio(silent_clip)
    assert_one_line_error(excinfo, silent_clip)


def test_resolve_audio_source_modes(clip, silent_clip, tmp_path):
    assert resolve_audio_source(clip, None, "auto") == clip
    assert resolve_audio_source(clip, None, "required") == clip
    separate = write_wav(tmp_path / "other.wav", 2)
    assert resolve_audio_source(silent_clip, separate, "required") == separate
    assert resolve_audio_source(clip, separate, "auto") == separate
    assert resolve_audio_source(clip, separate, "off") is None
    with pytest.raises(MediaError, match="file not found") as excinfo:
        resolve_audio_source(clip, tmp_path / "missing.wav", "auto")
    assert_one_line_error(excinfo, tmp_path / "missing.wav")
    with pytest.raises(MediaError, match="no audio track.*media.audio=auto"):
        resolve_audio_source(silent_clip, None, "required")
    with pytest.raises(ConfigError, match="media.audio"):
        resolve_audio_source(clip, None, "sometimes")


@pytest.mark.parametrize("resolve", [resolve_audio, resolve_audio_source])
def test_missing_track_warning_points_at_the_caller(silent_clip, resolve):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve(silent_clip, None, "auto") is None
    assert len(caught) == 1 and issubclass(caught[0].category, MediaWarning)
    assert caught[0].filename == __file__


# --- lazy audio: iter_audio gives what one decode of the whole file gives --------------------------


def whole_file_audio(path, sample_rate=SR):
    """The audio as decoded in one piece (load_audio before it was made lazy): the reference."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except RuntimeError:
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            frames = [*container.decode(stream), None]
            wave = np.concatenate([f.to_ndarray().reshape(-1) for fr in frames for f in resampler.resample(fr)])
            seconds = float(stream.duration * stream.time_base) if stream.duration else container.duration / av.time_base
            declared = round(seconds * sample_rate)
            pad = math.ceil(stream.codec_context.frame_size * sample_rate / stream.codec_context.sample_rate)
            return wave[:declared] if 0 < len(wave) - declared < pad else wave
    wave = data.mean(axis=1, dtype=np.float32)
    return wave if rate == sample_rate else soxr.resample(wave, rate, sample_rate)


def _long_mp4(d, rate):
    return write_clip(d / f"long{rate}.mp4", 65, width=32, height=32, fps=2, sample_rate=rate)


def _long_wav(d, rate):
    return write_wav(d / f"long{rate}.wav", 65, sample_rate=rate)


def _stereo_flac(d, rate):
    wave = np.random.default_rng(3).normal(0, 0.1, (rate * 40 + 77, 2)).astype(np.float32)
    sf.write(d / "stereo.flac", wave, rate, subtype="PCM_24")
    return d / "stereo.flac"


@pytest.fixture(scope="module")
def long_media(tmp_path_factory):
    d = tmp_path_factory.mktemp("long")
    return {
        "mp4-aac-16k": _long_mp4(d, 16000),
        "mp4-aac-44k": _long_mp4(d, 44100),
        "wav-44k": _long_wav(d, 44100),
        "wav-16k": _long_wav(d, 16000),
        "flac-stereo-48k": _stereo_flac(d, 48000),
    }


@pytest.mark.parametrize("kind", ["mp4-aac-16k", "mp4-aac-44k", "wav-44k", "wav-16k", "flac-stereo-48k"])
def test_iter_audio_chunks_concatenate_to_the_whole_decode_exactly(long_media, kind):
    path = long_media[kind]
    want = whole_file_audio(path)
    chunks = iter_audio(path)
    assert inspect.isgenerator(chunks)
    chunks = list(chunks)
    assert all(c.dtype == np.float32 and c.ndim == 1 for c in chunks)
    assert [len(c) for c in chunks[:-1]] == [30 * SR] * (len(chunks) - 1) and 0 < len(chunks[-1]) <= 30 * SR
    np.testing.assert_array_equal(np.concatenate(chunks), want)
    np.testing.assert_array_equal(load_audio(path), want)
    if kind.startswith(("mp4", "wav")):
        assert len(want) == 65 * SR and len(chunks) == 3  # AAC's end padding is trimmed, as before


@pytest.mark.parametrize("kind", ["mp4-aac-44k", "wav-44k"])
@pytest.mark.parametrize("chunk_s", [7.3, 0.05])
def test_iter_audio_other_chunk_sizes_and_rates(long_media, kind, chunk_s):
    path = long_media[kind]
    chunks = list(iter_audio(path, sample_rate=24000, chunk_s=chunk_s))
    size = round(chunk_s * 24000)
    assert {len(c) for c in chunks[:-1]} == {size} and 0 < len(chunks[-1]) <= size
    np.testing.assert_array_equal(np.concatenate(chunks), whole_file_audio(path, 24000))


def test_aac_tail_trim_never_cuts_a_yielded_chunk(tmp_path):
    # The declared end falls inside the last AAC frame; chunk edges land on and around it.
    path = write_clip(tmp_path / "odd.mp4", 3.37, width=32, height=32, fps=2, sample_rate=44100)
    want = whole_file_audio(path)
    assert len(want) == round(3.37 * SR)
    for chunk_s in (3.37, 3.36, 1.0, 0.064):
        np.testing.assert_array_equal(np.concatenate(list(iter_audio(path, chunk_s=chunk_s))), want)


def test_iter_audio_memory_does_not_grow_with_duration(tmp_path):
    path = write_wav(tmp_path / "long.wav", 130, sample_rate=44100)
    whole_bytes = 130 * SR * 4
    tracemalloc.start()
    try:
        n = 0
        for chunk in iter_audio(path, chunk_s=5):
            assert len(chunk) <= 5 * SR
            n += len(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 130 * SR
    # One chunk being filled, the one the loop holds, one soundfile block: far from the whole track.
    assert peak < 0.3 * whole_bytes, f"peak {peak / 1e6:.1f} MB"


def test_iter_audio_rejects_bad_chunk_size(clip):
    with pytest.raises(ValueError, match="chunk_s"):
        iter_audio(clip, chunk_s=0)


def test_decode_ends_passes_whole_files(clip, silent_clip, tmp_path):
    assert decode_ends(clip) == probe(clip)
    assert decode_ends(silent_clip, ("video", "audio")) == probe(silent_clip)  # a missing type is not checked
    wav = write_wav(tmp_path / "a.wav", 3)
    assert decode_ends(wav, ("audio",)).has_audio


def test_decode_ends_catches_a_clip_cut_short(clip, tmp_path):
    """60% of a streamable mp4: it opens, `probe` (the first frame) passes, iter_frames would pad
    the missing end with the last frame it decoded; the check names the file and the stream."""
    cut = truncated(clip, tmp_path / "cut.mp4")
    assert probe(cut).duration_s == 6.0
    with pytest.raises(MediaError) as excinfo:
        decode_ends(cut, ("video",))
    assert_one_line_error(excinfo, cut)
    assert "cannot decode the last second of its video stream" in str(excinfo.value)
    with pytest.raises(MediaError, match="cannot decode the last second of its audio stream"):
        decode_ends(cut, ("audio",))
    with pytest.raises(MediaError, match="cannot decode the last 2 s of its video stream"):
        decode_ends(cut, ("video",), seconds=2)


def test_check_sources_names_the_field_and_follows_the_audio_mode(clip, silent_clip, tmp_path):
    bad = garbage(tmp_path / "bad.mp4")
    cut = truncated(clip, tmp_path / "cut.mp4")
    wav = write_wav(tmp_path / "a.wav", 3)
    for mode in ("auto", "required", "off"):
        check_sources(clip, None, mode)
        check_sources(clip, wav, mode)
        check_sources(None, wav, mode)  # audio-only: the audio is read whatever the mode
        with pytest.raises(MediaError, match=rf"^video: {bad}: cannot be decoded as media"):
            check_sources(bad, None, mode)
        with pytest.raises(MediaError, match=rf"^audio: {bad}: cannot be decoded as media"):
            check_sources(None, bad, mode)
    # A separate audio file is read unless media.audio=off.
    for mode in ("auto", "required"):
        with pytest.raises(MediaError, match=rf"^audio: {bad}: "):
            check_sources(clip, bad, mode)
    check_sources(clip, bad, "off")
    with pytest.raises(MediaError, match=rf"^video: {cut}: cannot decode the last second of its video stream"):
        check_sources(cut, wav, "off")
    # A video without an audio track: an error only when audio is required.
    check_sources(silent_clip, None, "auto")
    check_sources(silent_clip, None, "off")
    with pytest.raises(MediaError, match=rf"^video: {silent_clip}: no audio track, but audio is required"):
        check_sources(silent_clip, None, "required")
    with pytest.raises(MediaError, match=rf"^video: {wav}: not a video file"):
        check_sources(wav, None, "off")
    with pytest.raises(MediaError, match=rf"^audio: {silent_clip}: no audio track"):
        check_sources(None, silent_clip, "auto")


def test_check_sources_checks_the_streams_that_will_be_read(clip, tmp_path, monkeypatch):
    """The video's own audio track is checked when it is the audio source (`resolve_audio_source`):
    not with a separate audio file, nor with media.audio=off."""
    import omnimem_train.media.decode as decode

    wav = write_wav(tmp_path / "a.wav", 3)
    calls = []
    real = decode.decode_ends
    monkeypatch.setattr(decode, "decode_ends", lambda path, kinds, seconds: calls.append((path, kinds))
                        or real(path, kinds, seconds))
    expected = {
        ("auto", None): [(clip, ("video", "audio"))],
        ("required", None): [(clip, ("video", "audio"))],
        ("off", None): [(clip, ("video",))],
        ("auto", wav): [(clip, ("video",)), (wav, ("audio",))],
        ("off", wav): [(clip, ("video",))],
    }
    for (mode, audio), want in expected.items():
        calls.clear()
        check_sources(clip, audio, mode)
        assert calls == want, (mode, audio)
