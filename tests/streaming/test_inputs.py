"""`media_input`: audio is decoded lazily, 30 s at a time, and gives the same windows as a whole decode."""

import inspect
import warnings

import numpy as np
import pytest

import omnimem_train.streaming.inputs as inputs
from data_prep.synthetic import write_clip, write_wav
from omnimem_train.config.schema import MediaConfig
from omnimem_train.errors import MediaError
from omnimem_train.media.decode import MediaWarning, iter_audio, load_audio
from omnimem_train.media.features import LogMelExtractor, audio_tokens_for_frames
from omnimem_train.streaming.inputs import media_input

SR = 16000


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    return {
        "clip": str(write_clip(d / "clip.mp4", 65, width=56, height=56, fps=2)),
        "silent": str(write_clip(d / "silent.mp4", 4, width=56, height=56, fps=2, audio=False)),
        "wav44": str(write_wav(d / "a44.wav", 65, sample_rate=44100)),
    }


@pytest.fixture(scope="module")
def mel():
    return LogMelExtractor()


@pytest.fixture
def pulls(monkeypatch):
    """Counts the audio chunks media_input's windows have pulled, per source file."""
    counts = {}

    def counting_iter_audio(path, *args, **kwargs):
        chunks = iter_audio(path, *args, **kwargs)  # checks the file now, as the real one does
        counts[str(path)] = 0

        def gen():
            for chunk in chunks:
                counts[str(path)] += 1
                assert len(chunk) <= 30 * SR
                yield chunk

        return gen()

    monkeypatch.setattr(inputs, "iter_audio", counting_iter_audio)
    return counts


def assert_windows_equal(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_audio_only_is_lazy_and_exact(tiny_omni, files, mel, pulls):
    media, est = media_input(tiny_omni, MediaConfig(), audio=files["wav44"])
    assert inspect.isgenerator(media.mel_windows) and media.frames is None
    assert pulls[files["wav44"]] == 0  # nothing decoded yet
    first = next(media.mel_windows)
    assert pulls[files["wav44"]] == 1  # one 30-s chunk per window
    got = [first, *media.mel_windows]
    assert [w.shape[1] for w in got] == [3000, 3000, 500]
    assert_windows_equal(got, list(mel.iter_windows(load_audio(files["wav44"]))))
    assert media.duration_s == 65.0
    assert est == audio_tokens_for_frames(6500) == 1625


@pytest.mark.parametrize("separate", [False, True])
def test_video_audio_is_lazy_and_exact(tiny_omni, files, mel, pulls, separate):
    source = files["wav44"] if separate else files["clip"]
    media, est = media_input(tiny_omni, MediaConfig(), video=files["clip"], audio=source if separate else None)
    assert pulls[source] == 0
    got = list(media.mel_windows)
    assert pulls[source] == 3
    assert_windows_equal(got, list(mel.iter_windows(load_audio(source))))
    # 130 frames at 2 fps -> 65 temporal patches of 2x2 tokens (56x56), plus 65 s of audio.
    assert media.duration_s == 65.0
    assert est == 65 * 4 + 1625


def test_video_without_audio(tiny_omni, files):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        media, est = media_input(tiny_omni, MediaConfig(), video=files["silent"])
    assert media.mel_windows is None and est == 4 * 4
    assert [issubclass(w.category, MediaWarning) for w in caught] == [True]
    with pytest.raises(MediaError, match="no audio track"):
        media_input(tiny_omni, MediaConfig(audio="required"), video=files["silent"])
    media, _ = media_input(tiny_omni, MediaConfig(audio="off"), video=files["clip"])
    assert media.mel_windows is None


def test_bad_audio_file_fails_before_streaming(tiny_omni, files, tmp_path):
    notes = tmp_path / "notes.wav"
    notes.write_text("not audio\n" * 50)
    for kwargs in ({"audio": str(notes)}, {"video": files["clip"], "audio": str(notes)}):
        with pytest.raises(MediaError, match="notes.wav"):
            media_input(tiny_omni, MediaConfig(), **kwargs)
