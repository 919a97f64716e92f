"""With an unlimited budget, group-wise streaming must reproduce one full forward exactly."""

import numpy as np
import pytest
import torch

from omnimem_train.memory.registry import make_policy
from omnimem_train.models.base import MediaInput, Modality
from omnimem_train.models.prompt import split_chat_prompt
from omnimem_train.streaming.answer import generate
from omnimem_train.streaming.engine import StreamingEngine
from tests.streaming.omni_inputs import full_inputs

TOL = 1e-4


def _media(seconds=6.0, fps=2.0, size=56, seed=0, video=True, audio=True, audio_seconds=None):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (int(seconds * fps), size, size, 3), dtype=np.uint8) if video else None
    t_mel = int((audio_seconds or seconds) * 100)
    mel = rng.standard_normal((128, t_mel)).astype(np.float32) if audio else None
    return frames, mel


def _windows(mel, split):
    """Feed the mel in uneven windows, so the adapter's re-cutting into encoder windows is exercised."""
    out, s = [], 0
    for n in split:
        out.append(mel[:, s : s + n])
        s += n
    if s < mel.shape[1]:
        out.append(mel[:, s:])
    return out


def _stream_logits(adapter, frames, mel, fps, prefix, question, group_size, split=(120, 80, 300)):
    engine = StreamingEngine(adapter, make_policy("full", len(adapter.decoder_layers)), group_size=group_size)
    media = MediaInput(
        frames=iter(frames) if frames is not None else None, fps=fps,
        mel_windows=iter(_windows(mel, split)) if mel is not None else None, duration_s=6.0,
    )
    pieces = list(adapter.stream(media, prefix))
    with torch.no_grad():
        state, logits = engine.prefill(iter(pieces), collect_logits=True)
        q_piece = adapter.text_piece(question, state.next_pos)
        q = engine.forward(state, q_piece, want_logits="all")
    ids = torch.cat([p.token_ids for p in pieces] + [torch.tensor(question)])
    pos = torch.cat([p.positions for p in pieces] + [q_piece.positions], 1)
    mod = torch.cat([p.modality for p in pieces])
    return torch.cat([logits, q]), ids, pos, mod, engine, state


@pytest.mark.parametrize("group_size", [7, 50, 64, 133, 100_000])
@pytest.mark.parametrize(
    "kind,audio_seconds", [("av", None), ("av", 4.4), ("av", 2.6), ("av", 7.3), ("video", None), ("audio", None)]
)
def test_omni_streaming_equals_full_forward(tiny_omni, group_size, kind, audio_seconds):
    """Interleaved audio+video (audio as long as, shorter than, longer than the video; 4.4 s ends
    inside the last chunk before that chunk's last video patch), video only, audio only; group
    sizes from a few tokens to the whole stream."""
    ad = tiny_omni
    frames, mel = _media(video=kind != "audio", audio=kind != "video", audio_seconds=audio_seconds)
    prefix, question = split_chat_prompt(ad.tokenizer, "You watch videos.", "What colour was shown?")
    input_ids, kw = full_inputs(ad.tokenizer, prefix, question, frames=frames, fps=2.0, mel=mel)
    with torch.no_grad():
        ref = ad.model(input_ids=input_ids, **kw).logits[0]
    got, ids, pos, mod, _, _ = _stream_logits(ad, frames, mel, 2.0, prefix, question, group_size)
    # The streamed token layout is the official processor's, token for token.
    assert ids.tolist() == input_ids[0].tolist()
    # Positions equal the model's own get_rope_index on the full sequence.
    ref_pos, _ = ad.model.model.get_rope_index(
        input_ids, video_grid_thw=kw.get("video_grid_thw"), attention_mask=kw["attention_mask"],
        use_audio_in_video=kw.get("use_audio_in_video", False),
        audio_seqlens=kw["feature_attention_mask"].sum(-1) if mel is not None else None,
        second_per_grids=kw.get("video_second_per_grid"),
    )
    assert torch.equal(pos, ref_pos[:, 0])
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= TOL
    # Labels: video placeholders are VISUAL, audio placeholders AUDIO, everything else TEXT.
    n = mod.numel()
    assert torch.equal(mod == Modality.VISUAL, input_ids[0, :n] == ad.cfg.video_token_id)
    assert torch.equal(mod == Modality.AUDIO, input_ids[0, :n] == ad.cfg.audio_token_id)


def test_groups_split_a_two_second_chunk(tiny_omni):
    """A 2-s chunk of the tiny model holds 8 video + 50 audio tokens; group size 29 cuts through it."""
    frames, mel = _media()
    prefix, question = split_chat_prompt(tiny_omni.tokenizer, "s", "q")
    _, _, _, mod, engine, state = _stream_logits(tiny_omni, frames, mel, 2.0, prefix, question, 29)
    assert state.groups > (mod.numel() // 58)  # more groups than chunks: chunks were split


def test_omni_greedy_generation_matches_generate(tiny_omni):
    ad = tiny_omni
    frames, mel = _media(seed=3)
    prefix, question = split_chat_prompt(ad.tokenizer, "You watch videos.", "Describe it.")
    input_ids, kw = full_inputs(ad.tokenizer, prefix, question, frames=frames, fps=2.0, mel=mel)
    with torch.no_grad():
        ref = ad.model.generate(input_ids=input_ids, **kw, max_new_tokens=12, do_sample=False,
                                eos_token_id=None, pad_token_id=0)[0, input_ids.shape[1]:].tolist()
    engine = StreamingEngine(ad, make_policy("full", len(ad.decoder_layers)), group_size=40)
    media = MediaInput(frames=iter(frames), fps=2.0, mel_windows=iter([mel]), duration_s=6.0)
    with torch.no_grad():
        state, _ = engine.prefill(ad.stream(media, prefix))
    got = generate(engine, state, question, max_new_tokens=12, eos_ids=[])
    assert got == ref


def _text_context():
    return [
        (Modality.TEXT, "[0s]"), (Modality.VISUAL, " a red square on a blue background"),
        (Modality.AUDIO, " a tone is heard"), (Modality.TEXT, "[2s]"),
        (Modality.VISUAL, " the square moves to the left and turns green"), (Modality.AUDIO, " silence then one two three"),
    ] * 3


@pytest.mark.parametrize("group_size", [5, 32, 10_000])
def test_text_lm_streaming_equals_full_forward(tiny_llama, group_size):
    ad = tiny_llama
    prefix, question = split_chat_prompt(ad.tokenizer, "You read.", "What colour?")
    pieces = list(ad.stream(MediaInput(context=_text_context()), prefix))
    ids = torch.cat([p.token_ids for p in pieces] + [torch.tensor(question)])
    with torch.no_grad():
        ref = ad.model(input_ids=ids.unsqueeze(0)).logits[0]
        engine = StreamingEngine(ad, make_policy("full", len(ad.decoder_layers)), group_size=group_size)
        state, logits = engine.prefill(iter(pieces), collect_logits=True)
        q = engine.forward(state, ad.text_piece(question, state.next_pos), want_logits="all")
    assert (torch.cat([logits, q]) - ref).abs().max().item() <= TOL
    pos = torch.cat([p.positions for p in pieces], 1)[0]
    assert torch.equal(pos, torch.arange(pos.numel()))


def test_text_lm_greedy_generation_matches_generate(tiny_llama):
    ad = tiny_llama
    prefix, question = split_chat_prompt(ad.tokenizer, "You read.", "What colour?")
    pieces = list(ad.stream(MediaInput(context=_text_context()), prefix))
    ids = torch.cat([p.token_ids for p in pieces] + [torch.tensor(question)]).unsqueeze(0)
    with torch.no_grad():
        ref = ad.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                do_sample=False, eos_token_id=None, pad_token_id=0)[0, ids.shape[1]:].tolist()
        engine = StreamingEngine(ad, make_policy("full", len(ad.decoder_layers)), group_size=16)
        state, _ = engine.prefill(iter(pieces))
    assert generate(engine, state, question, max_new_tokens=12, eos_ids=[]) == ref
