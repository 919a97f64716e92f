"""Vision patches and log-mel features against the official transformers implementations."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers.models.qwen2_vl as qwen2_vl
from transformers import Qwen2VLImageProcessorPil, WhisperFeatureExtractor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

from omnimem_train.errors import ModelError
from omnimem_train.media.features import LogMelExtractor, audio_tokens_for_frames, patchify, smart_resize

SIZES = [(28, 28), (56, 84), (112, 112), (252, 140)]


def random_frames(n, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("h, w", SIZES)
def test_patchify_matches_official_image_processor_exactly(h, w):
    frame = random_frames(1, h, w)[0]
    official = Qwen2VLImageProcessorPil()(images=[frame], do_resize=False, return_tensors="pt")
    pixel_values, grid_thw = patchify(frame[None])
    assert torch.equal(grid_thw, official["image_grid_thw"])
    assert pixel_values.dtype == torch.float32
    assert (pixel_values - official["pixel_values"]).abs().max().item() == 0.0


def official_video_patchify():
    """`Qwen2VLVideoProcessor.patchify` from the installed transformers source.

    Its module imports torchvision (not installable with our torch), so the method is compiled
    on its own; it only needs torch.
    """
    source = Path(qwen2_vl.__file__).with_name("video_processing_qwen2_vl.py")
    tree = ast.parse(source.read_text())
    methods = [
        node
        for cls in tree.body
        if isinstance(cls, ast.ClassDef) and cls.name == "Qwen2VLVideoProcessor"
        for node in cls.body
        if isinstance(node, ast.FunctionDef) and node.name == "patchify"
    ]
    if not methods:
        pytest.skip("Qwen2VLVideoProcessor.patchify not found in this transformers version")
    namespace = {"torch": torch}
    exec(compile(ast.Module(body=methods, type_ignores=[]), str(source), "exec"), namespace)
    return namespace["patchify"]


@pytest.mark.parametrize("n_frames", [1, 2, 3, 4])
def test_patchify_matches_official_video_layout(n_frames):
    frames = random_frames(n_frames, 56, 84, seed=n_frames)
    # Normalize each frame with the official image processor, then lay out with the official video code.
    proc = Qwen2VLImageProcessorPil()
    chw = [
        np.asarray(
            proc.normalize(proc.rescale(f.transpose(2, 0, 1), 1 / 255), proc.image_mean, proc.image_std),
            dtype=np.float32,
        )
        for f in frames
    ]
    video = torch.from_numpy(np.stack(chw))[None]  # (1, F, C, H, W)
    want, *grid = official_video_patchify()(None, video, patch_size=14, merge_size=2, temporal_patch_size=2)
    got, grid_thw = patchify(frames)
    assert grid_thw.tolist() == [grid]
    assert (got - want[0]).abs().max().item() == 0.0


@pytest.mark.parametrize("n_frames, grid_t", [(1, 1), (2, 1), (5, 3), (8, 4)])
def test_patchify_shapes(n_frames, grid_t):
    pixel_values, grid_thw = patchify(random_frames(n_frames, 84, 56))
    assert grid_thw.dtype == torch.long and grid_thw.tolist() == [[grid_t, 6, 4]]
    assert pixel_values.shape == (grid_t * 6 * 4, 3 * 2 * 14 * 14)


def test_patchify_pads_by_repeating_last_frame():
    frames = random_frames(3, 28, 28)
    padded = np.concatenate([frames, frames[-1:]])
    assert torch.equal(patchify(frames)[0], patchify(padded)[0])


@pytest.mark.parametrize(
    "bad",
    [
        random_frames(1, 30, 28),
        random_frames(1, 28, 28).astype(np.float32),
        np.zeros((0, 28, 28, 3), np.uint8),
    ],
)
def test_patchify_rejects_bad_frames(bad):
    with pytest.raises(ValueError):
        patchify(bad)


@pytest.mark.parametrize(
    "h, w", [(112, 112), (480, 640), (1080, 1920), (720, 1280), (30, 500), (10, 10), (3000, 17), (333, 777)]
)
@pytest.mark.parametrize(
    "min_pixels, max_pixels",
    [(56 * 56, 28 * 28 * 1280), (128 * 28 * 28, 768 * 28 * 28), (28 * 28, 4 * 28 * 28)],
)
def test_smart_resize_matches_transformers(h, w, min_pixels, max_pixels):
    want = hf_smart_resize(h, w, 28, min_pixels=min_pixels, max_pixels=max_pixels)
    assert smart_resize(h, w, 28, min_pixels=min_pixels, max_pixels=max_pixels) == want


def test_smart_resize_rejects_extreme_aspect_ratio():
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2500)


@pytest.fixture(scope="module")
def mel():
    return LogMelExtractor()


@pytest.mark.parametrize(
    "seconds, frames",
    [(70, [3000, 3000, 1000]), (30, [3000]), (30.015, [3000, 2]), (0.5, [50]), (0, [])],
)
def test_iter_windows_counts_and_frames(mel, seconds, frames):
    wave = np.random.default_rng(0).normal(0, 0.1, round(seconds * 16000)).astype(np.float32)
    windows = list(mel.iter_windows(wave))
    assert [w.shape for w in windows] == [(128, f) for f in frames]
    assert all(w.dtype == np.float32 for w in windows)
    assert mel.log_mel(wave).shape == (128, sum(frames))


def test_window_matches_whisper_extractor_valid_frames(mel):
    wave = np.random.default_rng(1).normal(0, 0.1, 12345).astype(np.float32)
    official = WhisperFeatureExtractor(feature_size=128)(wave, sampling_rate=16000, return_tensors="np")
    got = mel.log_mel(wave)
    assert got.shape == (128, 78)  # ceil(12345 / 160)
    np.testing.assert_array_equal(got, official["input_features"][0, :, :78])


def test_shorter_windows(mel):
    wave = np.zeros(25 * 16000, np.float32)
    assert [w.shape[1] for w in mel.iter_windows(wave, window_s=10)] == [1000, 1000, 500]
    with pytest.raises(ValueError, match="window_s"):
        next(mel.iter_windows(wave, window_s=31))


def test_from_dir_loads_config_or_falls_back(tmp_path):
    assert LogMelExtractor.from_dir(tmp_path).n_mels == 128
    WhisperFeatureExtractor(feature_size=80, hop_length=320).save_pretrained(tmp_path)
    loaded = LogMelExtractor.from_dir(tmp_path)
    assert (loaded.n_mels, loaded.hop_length, loaded.sampling_rate) == (80, 320, 16000)
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ModelError, match=str(tmp_path)):
        LogMelExtractor.from_dir(tmp_path)


@pytest.mark.parametrize(
    "t_mel, tokens", [(100, 25), (400, 100), (3000, 750), (6500, 1625), (7000, 1750), (1, 0), (3, 1)]
)
def test_audio_tokens_for_frames(t_mel, tokens):
    assert audio_tokens_for_frames(t_mel) == tokens


def test_audio_tokens_add_up_over_30s_windows():
    # 3000 is a multiple of 4, so tokens per window sum to the tokens of the whole sequence.
    for total in range(1, 9000, 37):
        windows = [3000] * (total // 3000) + ([total % 3000] if total % 3000 else [])
        assert sum(map(audio_tokens_for_frames, windows)) == audio_tokens_for_frames(total)


def _split(wave, sizes):
    """Cut `wave` into consecutive pieces of the given sizes (the last takes the rest)."""
    edges = np.cumsum(sizes)
    return np.split(wave, edges[edges < len(wave)])


@pytest.mark.parametrize(
    "sizes",
    [
        [480000],  # 30-s chunks, as iter_audio gives
        [960000],  # multiples of the window
        [480000, 960000, 480000],
        [123457],  # any sizes: the windows are regrouped
        [1, 479999, 480001, 7],
    ],
)
def test_windows_from_chunks_equal_windows_of_the_whole_wave(mel, sizes):
    wave = np.random.default_rng(2).normal(0, 0.1, 70 * 16000 + 333).astype(np.float32)
    want = list(mel.iter_windows(wave))
    for got in (
        list(mel.iter_windows(iter(_split(wave, sizes)))),
        list(mel.iter_windows_from_chunks(_split(wave, sizes))),
    ):
        assert len(got) == len(want) == 3
        for g, w in zip(got, want):
            assert g.dtype == np.float32
            np.testing.assert_array_equal(g, w)


def test_windows_from_chunks_shorter_windows_and_edge_cases(mel):
    wave = np.random.default_rng(4).normal(0, 0.1, 25 * 16000).astype(np.float32)
    got = list(mel.iter_windows(iter(_split(wave, [160000, 7, 3000])), window_s=10))
    want = list(mel.iter_windows(wave, window_s=10))
    assert [w.shape[1] for w in got] == [1000, 1000, 500]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert list(mel.iter_windows(iter([]))) == []
    assert list(mel.iter_windows(iter([np.zeros(0, np.float32)]))) == []
    with pytest.raises(ValueError, match="mono"):
        list(mel.iter_windows(iter([np.zeros((2, 10), np.float32)])))
    with pytest.raises(ValueError, match="window_s"):
        mel.iter_windows(iter([wave]), window_s=31)


def test_windows_from_chunks_are_lazy(mel):
    pulled = []

    def chunks():
        for i in range(4):
            pulled.append(i)
            yield np.zeros(480000, np.float32)

    windows = mel.iter_windows(chunks())
    assert pulled == []
    next(windows)
    assert pulled == [0]  # one 30-s chunk read for the first window
