"""StreamSession: a live stream fed in pieces gives the same memory and answers as one-shot streaming
(to the bit), stays within the budget after every piece, and asking never changes the stream."""

import json
import shutil

import numpy as np
import pytest
import torch

from omnimem_train.config.schema import MediaConfig
from omnimem_train.errors import ConfigError, MediaError, ModelError
from omnimem_train.media.features import LogMelExtractor
from omnimem_train.memory.budgets import Budgets
from omnimem_train.memory.registry import make_policy
from omnimem_train.models.base import MediaInput, Modality
from omnimem_train.models.builtin import build_tiny_model, resolve_builtin
from omnimem_train.models.prompt import split_chat_prompt
from omnimem_train.models.qwen2_5_omni import Qwen2_5OmniAdapter
from omnimem_train.serving import open_session
from omnimem_train.streaming.engine import StreamingEngine
from omnimem_train.streaming.infer import answer_question
from omnimem_train.streaming.session import StreamSession

SYSTEM, QUESTION, OPTIONS = "You watch.", "What was shown?", ["red", "green", "blue"]
BUDGET, GROUP = 60, 40  # 60 tokens/layer: audio 10, visual 50 (rho 5); groups cut across chunks
FPS, SR = 2.0, 16000
# 5 uneven pieces; frame and sample cuts fall at different media times (neither on chunk edges)
FRAME_CUTS = (0, 3, 10, 11, 17, 21)
SAMPLE_CUTS = (0, 5_000, 40_000, 70_000, 121_000, 164_800)


@pytest.fixture(scope="module")
def ad():
    return Qwen2_5OmniAdapter(*build_tiny_model("tiny-omni", seed=3))


@pytest.fixture(scope="module")
def media():
    """10.5 s of 112x112 frames at 2 fps (16 visual tokens per patch) and 10.3 s of audio whose
    loudness grows, so where the log-mel windows are cut changes the features."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (21, 112, 112, 3), dtype=np.uint8)
    t = np.arange(SAMPLE_CUTS[-1]) / SR
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) * np.linspace(0.01, 1, len(t))).astype(np.float32)
    return frames, wave


def _policy(ad):
    return make_policy("omnimem", len(ad.decoder_layers), budget=BUDGET)


BY_TOKENS = dict(group_size=GROUP)


def _session(ad, group=BY_TOKENS, **kw):
    return StreamSession(StreamingEngine(ad, _policy(ad), **group), MediaConfig(), system_prompt=SYSTEM, **kw)


def _check_budget(state):
    (audio, visual), = set(Budgets.uniform(BUDGET, 1, rho=5.0).per_layer)
    for mem in state.layers:
        if mem is not None:
            assert mem.count(Modality.AUDIO) <= audio and mem.count(Modality.VISUAL) <= visual


def _feed(session, frames=None, wave=None, pieces=5):
    """Feed in `pieces` uneven pieces (5: the cuts above; 1: all at once), checking the budget after each."""
    cuts = range(len(FRAME_CUTS) - 1) if pieces == 5 else [None]
    for i in cuts:
        f = frames if i is None or frames is None else frames[FRAME_CUTS[i]:FRAME_CUTS[i + 1]]
        w = wave if i is None or wave is None else wave[SAMPLE_CUTS[i]:SAMPLE_CUTS[i + 1]]
        session.feed(frames=f, audio=w)
        _check_budget(session.state)


def _offline_media(frames=None, wave=None, window_s=30.0):
    windows = None if wave is None else LogMelExtractor().iter_windows(wave, window_s)
    seconds = max(0 if frames is None else len(frames) / FPS, 0 if wave is None else len(wave) / SR)
    return MediaInput(frames=None if frames is None else iter(frames), fps=FPS, mel_windows=windows,
                      duration_s=seconds)


def _offline_state(ad, group=BY_TOKENS, **media):
    prefix, _ = split_chat_prompt(ad.tokenizer, SYSTEM, "")
    with torch.no_grad():
        state, _ = StreamingEngine(ad, _policy(ad), **group).prefill(ad.stream(_offline_media(**media), prefix))
    return state


def _offline_answer(ad, options=None, group=BY_TOKENS, **media):
    engine = StreamingEngine(ad, _policy(ad), **group)
    return answer_question(engine, _offline_media(**media), QUESTION, options, SYSTEM, max_new_tokens=6)


def _assert_same_memory(a, b):
    assert a.tokens_seen == b.tokens_seen and a.next_pos == b.next_pos and a.seen == b.seen
    for x, y in zip(a.layers, b.layers, strict=True):
        for name in ("keys", "values", "positions", "modality", "index"):
            assert torch.equal(getattr(x, name), getattr(y, name)), name
        assert x.extras.keys() == y.extras.keys()
        assert all(torch.equal(x.extras[k], y.extras[k]) for k in x.extras)


def _assert_same_answers(session, ad, group=BY_TOKENS, **media):
    got, ref = session.ask(QUESTION, OPTIONS), _offline_answer(ad, OPTIONS, group, **media)
    assert got.option_scores == pytest.approx(ref.option_scores, abs=1e-5) and got.choice == ref.choice
    assert got.text == ref.text
    pieces = list(session.ask(QUESTION, max_new_tokens=6))
    assert "".join(pieces) == _offline_answer(ad, None, group, **media).text
    assert len(pieces) > 1  # streamed piece by piece, not one block at the end


@pytest.mark.parametrize("group", [BY_TOKENS, dict(group_size=None, group_seconds=4.0)], ids=["tokens", "seconds"])
def test_video_only_in_five_pieces_equals_offline(ad, media, group):
    frames, _ = media
    session = _session(ad, group, audio=False)
    _feed(session, frames=frames)
    assert session.memory_report().layers[0].visual == BUDGET - 10  # eviction ran between pieces
    _assert_same_memory(session.snapshot()[1], _offline_state(ad, group, frames=frames))
    _assert_same_answers(session, ad, group, frames=frames)
    session.close()
    _assert_same_memory(session.state, _offline_state(ad, group, frames=frames))
    _assert_same_answers(session, ad, group, frames=frames)  # a closed stream still answers, over the same memory


@pytest.mark.parametrize("window_s", [2.0, 3.0])  # one window per chunk / windows straddling chunks
@pytest.mark.parametrize("video", [True, False], ids=["audio+video", "audio"])
def test_audio_in_five_pieces_equals_one_piece_and_offline(ad, media, window_s, video):
    frames, wave = media
    frames = frames if video else None
    five, one = (_session(ad, video=video, audio_window_s=window_s) for _ in range(2))
    _feed(five, frames, wave)
    _feed(one, frames, wave, pieces=1)
    assert five.memory_report().layers[0].audio == 10  # committed (and evicted) before the end
    _assert_same_memory(five.state, one.state)
    reference = _offline_state(ad, frames=frames, wave=wave, window_s=window_s)
    _assert_same_memory(five.snapshot()[1], reference)
    _assert_same_answers(five, ad, frames=frames, wave=wave, window_s=window_s)
    five.close()
    _assert_same_memory(five.state, reference)


def test_default_30s_windows_equal_the_offline_features(ad, media):
    """With the offline path's 30-s windows, an audio window is committed only once complete (the
    10-s clip never completes one before close), yet asking equals offline `infer` features."""
    frames, wave = media
    session = _session(ad)
    _feed(session, frames, wave)
    assert session.memory_report().tokens_seen < GROUP  # only the prompt: every chunk waits for its audio window
    _assert_same_memory(session.snapshot()[1], _offline_state(ad, frames=frames, wave=wave))
    _assert_same_answers(session, ad, frames=frames, wave=wave)
    session.close()
    _assert_same_memory(session.state, _offline_state(ad, frames=frames, wave=wave))


def test_asking_does_not_change_the_stream(ad, media):
    frames, wave = media
    asked, quiet = (_session(ad, audio_window_s=2.0) for _ in range(2))
    for session in (asked, quiet):
        session.feed(frames=frames[:9], audio=wave[:77_000])
    before = asked.memory_report()
    asked.ask(QUESTION, OPTIONS)
    assert asked.ask(QUESTION, max_new_tokens=3).text is not None
    asked.ask(QUESTION, flush=False)
    assert asked.memory_report() == before
    for session in (asked, quiet):
        session.feed(frames=frames[9:], audio=wave[77_000:])
        session.close()
    _assert_same_memory(asked.state, quiet.state)  # later feeds continued the stream, positions included


def test_flush_false_answers_over_complete_chunks_only(ad, media):
    """5 s of video = chunks 0 and 1 complete plus half of chunk 2: without flush the question sees
    exactly the stream of the first 4 s."""
    frames, _ = media
    session = _session(ad, audio=False)
    session.feed(frames=frames[:10])
    _assert_same_memory(session.snapshot(flush=False)[1], _offline_state(ad, frames=frames[:8]))
    _assert_same_memory(session.snapshot()[1], _offline_state(ad, frames=frames[:10]))


def test_frames_are_resized_to_the_model_frame_size(ad):
    session = _session(ad, audio=False)
    session.feed(frames=np.zeros((4, 120, 90, 3), np.uint8))  # -> 112x84 (multiples of 28)
    session.feed(frames=np.zeros((112, 84, 3), np.uint8))  # one frame, already at the size
    session.close()
    assert session.memory_report().layers[0].visual == 3 * (4 * 3)  # 3 patches of (112/28)*(84/28) tokens


def test_bad_inputs(ad, tiny_llama):
    with pytest.raises(ModelError, match="audio-visual"):
        StreamSession(StreamingEngine(tiny_llama, _policy(ad)))
    with pytest.raises(ConfigError, match="frame_drop"):
        StreamSession(StreamingEngine(ad, make_policy("frame_drop", len(ad.decoder_layers), budget=10)))
    session = _session(ad, audio=False)
    with pytest.raises(MediaError, match="no audio"):
        session.feed(audio=np.zeros(100, np.float32))
    with pytest.raises(MediaError, match="uint8"):
        session.feed(frames=np.zeros((2, 56, 56, 3), np.float32))
    with pytest.raises(MediaError, match="float"):
        _session(ad).feed(audio=np.zeros(100, np.int16))
    session.close()
    with pytest.raises(RuntimeError, match="closed"):
        session.feed(frames=np.zeros((2, 56, 56, 3), np.uint8))


def test_from_pretrained_uses_the_model_memory_settings(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(resolve_builtin("tiny-omni")[0], model)
    (model / "omnimem_budget.json").write_text(json.dumps([[2, 8]] * 4))
    (model / "omnimem_memory.json").write_text(json.dumps(
        {"compression": "streaming", "scorer": "recency", "budget_file": "omnimem_budget.json", "group_size": 24}))
    session = open_session(str(model), audio=False, device="cpu", memory={"sink_tokens": 0})
    assert session.policy.name == "recency" and session.engine.group_size == 24
    assert session.config.memory.sink_tokens == 0 and "recency" in session.settings_note
    session.feed(frames=np.zeros((8, 56, 56, 3), np.uint8))  # 16 visual tokens
    assert session.close().layers[0].visual == 8  # the budget file's visual budget
