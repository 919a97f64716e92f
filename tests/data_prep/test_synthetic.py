"""data_prep.synthetic writes real, deterministic media."""

import av
import numpy as np
import soundfile as sf

from data_prep.synthetic import main, write_clip, write_wav


def decoded_frames(path):
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_same_seed_same_frames_other_seed_differs(tmp_path):
    a = decoded_frames(write_clip(tmp_path / "a.mp4", 2, seed=3))
    b = decoded_frames(write_clip(tmp_path / "b.mp4", 2, seed=3))
    c = decoded_frames(write_clip(tmp_path / "c.mp4", 2, seed=4))
    assert a.shape == (16, 112, 112, 3)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_content_moves(tmp_path):
    frames = decoded_frames(write_clip(tmp_path / "a.mp4", 1, fps=4)).astype(int)
    assert np.abs(frames[0] - frames[-1]).mean() > 1


def test_video_only_clip_has_no_audio_stream(tmp_path):
    path = write_clip(tmp_path / "v.mp4", 1, width=64, height=48, fps=5, audio=False)
    with av.open(str(path)) as container:
        assert len(container.streams.audio) == 0
        video = container.streams.video[0]
        assert (video.codec_context.name, video.codec_context.width, video.codec_context.height) == (
            "h264",
            64,
            48,
        )


def test_clip_has_aac_mono_audio(tmp_path):
    with av.open(str(write_clip(tmp_path / "a.mp4", 1))) as container:
        audio = container.streams.audio[0]
        assert (audio.codec_context.name, audio.sample_rate, audio.layout.nb_channels) == ("aac", 16000, 1)


def test_write_wav_exact_length_and_seeded(tmp_path):
    a, rate = sf.read(write_wav(tmp_path / "a.wav", 1.5, seed=1))
    b, _ = sf.read(write_wav(tmp_path / "b.wav", 1.5, seed=2))
    assert rate == 16000 and a.shape == (24000,)
    assert not np.array_equal(a, b)


def test_cli_writes_clip(tmp_path, capsys):
    main([str(tmp_path / "cli.mp4"), "--seconds", "1", "--no-audio"])
    assert (tmp_path / "cli.mp4").stat().st_size > 0
    assert "cli.mp4" in capsys.readouterr().out
