"""Probe, frame sampling, audio loading and error messages on real files written by data_prep.synthetic."""

import inspect
import math
import warnings

import av
import numpy as np
import pytest
import soundfile as sf

from data_prep.synthetic import write_clip, write_wav
from omnimem_train.errors import ConfigError, MediaError
from omnimem_train.media.decode import (
    MediaInfo,
    MediaWarning,
    frame_size_for,
    iter_frames,
    load_audio,
    probe,
    resolve_audio,
)
from omnimem_train.media.features import LogMelExtractor, audio_tokens_for_frames

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
    for read in (probe, load_audio, lambda p: iter_frames(p, 2, 28, 28)):
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
