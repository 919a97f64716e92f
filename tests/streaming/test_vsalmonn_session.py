"""The live session API (`serving.open_session`) for the video-SALMONN 2+ family's two built-ins
(Qwen2.5-VL, and Qwen3-VL with DeepStack): frames of any size are brought to the model's token size,
memory stays within the budget after every feed, asking never changes the stream, the answers equal
offline streaming of the same media (the `infer` path), a relative budget needs the planned stream
size, and a model folder's saved memory settings (a release-format budget file) apply."""

import json
import shutil

import numpy as np
import pytest
import torch

from omnimem_train.errors import ConfigError
from omnimem_train.media.features import LogMelExtractor
from omnimem_train.memory.budgets import fraction_budget, split_by_rho
from omnimem_train.models.base import MediaInput, Modality
from omnimem_train.models.builtin import resolve_builtin
from omnimem_train.serving import open_session
from omnimem_train.streaming.engine import StreamingEngine
from omnimem_train.streaming.infer import answer_question
from omnimem_train.streaming.session import _resize

BUILTINS = ["tiny-vsalmonn2plus", "tiny-omnimem-qwen3vl"]
FPS, SR, SECONDS = 2.0, 16000, 8
QUESTION, OPTIONS = "What was shown?", ["red", "green"]
BUDGET = 48  # per layer: audio 8, visual 40 (rho 5)
MEMORY = {"scorer": "omnimem", "budget": BUDGET, "group_size": 32}
# 100x100 frames -> multiples of 28 (Qwen2.5-VL): 112x112, 4x4 tokens per 1-s step; of 32 (Qwen3-VL):
# 96x96, 3x3 tokens per step
VISUAL_PER_STEP = {"tiny-vsalmonn2plus": 16, "tiny-omnimem-qwen3vl": 9}


@pytest.fixture(params=BUILTINS)
def name(request):
    return request.param


@pytest.fixture(scope="module")
def media():
    """8 s of 100x100 frames at 2 fps and of a tone whose loudness grows."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (int(SECONDS * FPS), 100, 100, 3), dtype=np.uint8)
    t = np.arange(SECONDS * SR) / SR
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) * np.linspace(0.05, 1, len(t))).astype(np.float32)
    return frames, wave


def _open(name, **kw):
    kw.setdefault("memory", MEMORY)
    return open_session(f"builtin:{name}", device="cpu", **kw)


def _feed_seconds(session, frames, wave, check=None):
    """Feed one second at a time (2 frames + 16000 samples), calling `check` after each feed."""
    for s in range(SECONDS):
        session.feed(frames=frames[2 * s: 2 * s + 2], audio=wave[s * SR: (s + 1) * SR])
        if check:
            check(session)


def _within_budget(session):
    audio, visual = split_by_rho(BUDGET, 5.0)
    for mem in session.state.layers:
        if mem is not None:
            assert mem.count(Modality.AUDIO) <= audio and mem.count(Modality.VISUAL) <= visual


def test_session_stays_within_budget_and_answers_without_changing_the_stream(name, media):
    frames, wave = media
    session = _open(name)
    assert session.policy.name == "omnimem" and session.config.model_name_or_path == f"builtin:{name}"
    _feed_seconds(session, frames, wave, check=_within_budget)
    before = session.memory_report()
    answer = session.ask(QUESTION, OPTIONS)
    assert answer.choice == "AB"[int(np.argmax(answer.option_scores))] and len(answer.option_scores) == 2
    pieces = list(session.ask(QUESTION, max_new_tokens=4))
    assert pieces and all(isinstance(p, str) for p in pieces)
    assert session.memory_report() == before  # asking ran on a snapshot
    assert session.ask(QUESTION, OPTIONS).option_scores == answer.option_scores
    report = session.close()
    assert session.state.seen == {Modality.VISUAL: SECONDS * VISUAL_PER_STEP[name], Modality.AUDIO: 2 * SECONDS}
    assert [(layer.audio, layer.visual) for layer in report.layers] == [split_by_rho(BUDGET, 5.0)] * 4


@torch.no_grad()
def test_session_answers_equal_offline_streaming_of_the_same_media(name, media):
    """The session (fed second by second, frames resized by it) and `infer`'s path (the same frames at
    the model's size, one stream) give the same option scores and generated text."""
    frames, wave = media
    session = _open(name)
    _feed_seconds(session, frames, wave)
    got, text = session.ask(QUESTION, OPTIONS), session.ask(QUESTION, max_new_tokens=4).text
    fm = session.adapter.frame_multiple
    size = (round(100 / fm) * fm,) * 2
    resized = np.stack([_resize(f, *size) for f in frames])
    cfg = session.config
    refs = []
    for options, n in ((OPTIONS, cfg.generation.max_new_tokens), (None, 4)):
        engine = StreamingEngine.from_config(session.adapter, cfg.memory)
        offline = MediaInput(frames=iter(resized), fps=FPS, mel_windows=LogMelExtractor().iter_windows(wave),
                             duration_s=SECONDS)
        refs.append(answer_question(engine, offline, QUESTION, options, cfg.generation.system_prompt, n,
                                    answer_format=cfg.generation.answer_format))
    assert got.option_scores == pytest.approx(refs[0].option_scores, abs=1e-5) and got.choice == refs[0].choice
    assert text == refs[1].text


def test_a_relative_budget_needs_the_planned_stream_size(name):
    memory = {"scorer": "omnimem", "budget_fraction": 0.25, "group_size": 32}
    with pytest.raises(ConfigError, match="stream_tokens"):
        _open(name, memory=memory)
    planned = SECONDS * (VISUAL_PER_STEP[name] + 2)
    session = _open(name, memory=memory, stream_tokens=planned)
    assert session.policy.budgets.mean_total() == fraction_budget(0.25, {Modality.VISUAL: planned}) > 0


def test_a_model_folders_release_format_budget_file_applies(name, tmp_path):
    """omnimem_memory.json naming a budget file of layer totals (one int per decoder layer): each layer
    keeps that many audio+visual tokens in all."""
    model = tmp_path / "model"
    shutil.copytree(resolve_builtin(name)[0], model)
    totals = [20, 6, 12, 30]
    (model / "omnimem_budget.json").write_text(json.dumps(totals))
    (model / "omnimem_memory.json").write_text(json.dumps(
        {"compression": "streaming", "scorer": "omnimem", "budget_file": "omnimem_budget.json", "group_size": 24}))
    session = open_session(str(model), audio=False, device="cpu")
    assert session.policy.budgets.shared_layers == frozenset(range(4)) and session.engine.group_size == 24
    session.feed(frames=np.zeros((8, 64, 64, 3), np.uint8))  # 4 steps of 2x2 (Qwen2.5-VL: 56 px; Qwen3-VL: 64 px)
    layers = session.close().layers
    assert [layer.visual for layer in layers] == [min(t, 16) for t in totals]  # 16 visual tokens streamed
    assert all(layer.audio == 0 for layer in layers)
