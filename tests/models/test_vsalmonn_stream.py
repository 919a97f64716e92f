"""The video-SALMONN 2+ family's stream layout: at an unlimited budget, streaming group by group
equals one full forward of the backbone over the sequence a reference builds here from the layout
rule (token order, M-RoPE positions, DeepStack), for both built-ins, on interleaved audio+video
whose lengths do not divide into steps; the live session equals the offline stream."""

import numpy as np
import pytest
import torch

from omnimem_train.config.schema import MediaConfig
from omnimem_train.media.features import LogMelExtractor, patchify
from omnimem_train.memory.policies.full import FullMemory
from omnimem_train.memory.registry import make_policy
from omnimem_train.models.base import MediaInput, Modality
from omnimem_train.models.load import load_adapter
from omnimem_train.models.vsalmonn_stream import MEL_WINDOW
from omnimem_train.streaming.engine import StreamingEngine
from omnimem_train.streaming.session import StreamSession

FPS, SR = 2.0, 16000
BUILTINS = ["tiny-vsalmonn2plus", "tiny-omnimem-qwen3vl"]


@pytest.fixture(scope="module", params=BUILTINS)
def ad(request):
    return load_adapter(f"builtin:{request.param}", device="cpu")


@pytest.fixture(scope="module")
def prefix(ad):
    return ad.tokenizer("You watch.", add_special_tokens=False)["input_ids"]


def _media(ad, n_frames, audio_s, seed=0):
    rng = np.random.default_rng(seed)
    fm = ad.frame_multiple
    frames = rng.integers(0, 256, (n_frames, 2 * fm, 3 * fm, 3), dtype=np.uint8) if n_frames else None
    wave = None
    if audio_s:
        t = np.arange(int(SR * audio_s)) / SR
        wave = (0.2 * np.sin(2 * np.pi * 440 * t) * np.linspace(0.05, 1, len(t))).astype(np.float32)
    return frames, wave


def _offline(frames, wave):
    windows = None if wave is None else LogMelExtractor().iter_windows(wave)
    seconds = max(0 if frames is None else len(frames) / FPS, 0 if wave is None else len(wave) / SR)
    return MediaInput(frames=None if frames is None else iter(frames), fps=FPS, mel_windows=windows,
                      duration_s=seconds)


def _audio_reference(ad, wave):
    """Every audio token of `wave`: its 30-s log-mel windows encoded in one batch."""
    windows = list(LogMelExtractor().iter_windows(wave))
    real = sum(ad.audio_tokens(w.shape[1]) for w in windows)
    padded = [np.concatenate([w, np.full((w.shape[0], MEL_WINDOW - w.shape[1]), w.max() - 2.0, np.float32)], 1)
              for w in windows]
    out = ad.audio_bridge.encode(torch.from_numpy(np.stack(padded)))
    tokens = torch.cat([o[: ad.audio_tokens(w.shape[1])] for o, w in zip(out, windows, strict=True)])
    assert len(tokens) == real
    return tokens


def _video_reference(ad, frames):
    """All frames encoded at once: (T·h·w, D) tokens, (K, T·h·w, D) DeepStack or None, T, h, w."""
    px, thw = patchify(frames, patch_size=ad.patch, temporal_patch_size=ad.tps, merge_size=ad.merge,
                       mean=ad.image_mean, std=ad.image_std)
    out = ad.model.model.get_video_features(px, thw)
    deep = getattr(out, "deepstack_features", None)
    deep = torch.stack([torch.cat(list(d)) for d in deep]) if deep else None
    t, h, w = (int(x) for x in thw[0])
    return torch.cat(list(out.pooler_output)), deep, t, h // ad.merge, w // ad.merge, thw


def _split(ad, n_steps, n_audio):
    """Audio tokens per step (release rule: floor(j·spg·rate) boundaries), the rest after the last step."""
    spg = torch.tensor(ad.tps / FPS, dtype=torch.float32)
    bounds = [min(int((torch.tensor(j) * spg * ad.audio_rate).long()), n_audio) for j in range(n_steps + 1)]
    per = [bounds[j + 1] - bounds[j] for j in range(n_steps)]
    per[-1] += n_audio - sum(per)
    return per


def _reference(ad, frames, wave, prefix):
    """(ids, (3, L) positions, (L, D) embeds, (K, L, D) DeepStack or None, (L,) modality) of the full
    sequence, built from the layout rule alone."""
    tok = ad.tokenizer
    vid, aud, vs, ve = (ad.ids[k] for k in ("video", "audio", "vision_start", "vision_end"))
    video = _video_reference(ad, frames) if frames is not None else None
    audio = _audio_reference(ad, wave) if wave is not None else torch.zeros(0, ad.embed_tokens.embedding_dim)
    n_audio = len(audio)
    ids, pos = list(prefix), [(i, i, i) for i in range(len(prefix))]
    if ad.layout == "span":
        ids.append(vs)
        pos.append((len(pos),) * 3)
        s = len(pos)
        if video is not None:
            _, _, t_steps, h, w, _ = video
            per, k, max_t, max_any = _split(ad, t_steps, n_audio) if wave is not None else [0] * t_steps, 0, -1, -1
            spg = torch.tensor(ad.tps / FPS, dtype=torch.float32)
            for j in range(t_steps):
                t = int((torch.tensor(j) * spg * ad.tokens_per_second).long())
                for r in range(h):
                    for c in range(w):
                        ids.append(vid)
                        pos.append((s + t, s + r, s + c))
                max_t, max_any = max(max_t, t), max(max_any, t, h - 1, w - 1)
                for _ in range(per[j]):
                    ids.append(aud)
                    pos.append((s + k, s, s + k))
                    max_t, max_any = max(max_t, k), max(max_any, k)
                    k += 1
            end = s + (max_t if wave is not None else max_any) + 1
        else:
            for k in range(n_audio):
                ids.append(aud)
                pos.append((s + k, s + k, s))
            end = s + n_audio
        ids.append(ve)
        pos.append((end,) * 3)
        positions = torch.tensor(pos).T
    else:
        if video is not None:
            _, _, t_steps, h, w, thw = video
            per = _split(ad, t_steps, n_audio) if wave is not None else [0] * t_steps
            for j in range(t_steps):
                first, last = j * ad.tps, min((j + 1) * ad.tps, len(frames)) - 1
                ids += tok(f"<{(first + last) / 2 / FPS:.1f} seconds>", add_special_tokens=False)["input_ids"]
                ids += [vs] + [vid] * (h * w) + [aud] * per[j] + [ve]
        else:
            ids += [aud] * n_audio
        types = torch.tensor([[2 if i == vid else 0 for i in ids]])
        grid = video[5] if video is not None else None
        positions = ad.model.model.get_rope_index(torch.tensor([ids]), types, video_grid_thw=grid)[0][:, 0]
    ids = torch.tensor(ids)
    embeds = ad.embed_ids(ids).clone()
    modality = torch.zeros(len(ids), dtype=torch.long)
    deep = None
    if video is not None:
        embeds[ids == vid] = video[0]
        modality[ids == vid] = int(Modality.VISUAL)
        if video[1] is not None:
            deep = torch.zeros(len(video[1]), len(ids), embeds.shape[1])
            deep[:, ids == vid] = video[1]
    if n_audio:
        embeds[ids == aud] = audio
        modality[ids == aud] = int(Modality.AUDIO)
    return ids, positions, embeds, deep, modality


def _full_logits(ad, positions, embeds, deep, ids):
    kw = {}
    if deep is not None:
        kw = dict(visual_pos_masks=(ids == ad.ids["video"])[None],
                  deepstack_visual_embeds=[d[ids == ad.ids["video"]] for d in deep])
    out = ad.backbone(inputs_embeds=embeds[None], position_ids=positions[:, None, :], use_cache=False, **kw)
    return ad.lm_head(out.last_hidden_state[0])


CASES = {  # frames at 2 fps, audio seconds: neither divides into 1-s steps evenly
    "av-uneven": (11, 4.3),
    "audio-longer": (5, 7.7),
    "video-only": (7, 0),
    "audio-only": (0, 3.3),
}


@pytest.mark.parametrize("case", list(CASES))
@torch.no_grad()
def test_streaming_equals_the_full_forward_of_the_reference_sequence(ad, prefix, case):
    frames, wave = _media(ad, *CASES[case])
    ids, positions, embeds, deep, modality = _reference(ad, frames, wave, prefix)
    pieces = list(ad.stream(_offline(frames, wave), prefix))
    got_ids = torch.cat([p.token_ids for p in pieces])
    assert got_ids.tolist() == ids.tolist()  # the same layout, token for token
    assert torch.equal(torch.cat([p.positions for p in pieces], 1), positions)
    assert torch.equal(torch.cat([p.modality for p in pieces]), modality)
    state, streamed = StreamingEngine(ad, FullMemory(), group_size=7).prefill(iter(pieces), collect_logits=True)
    ref = _full_logits(ad, positions, embeds, deep, ids)
    assert (streamed - ref).abs().max() < 1e-4
    assert state.next_pos == int(positions[:, -1].max()) + 1


@torch.no_grad()
def test_deepstack_reaches_the_stream(ad, prefix):
    """Without the DeepStack features the Qwen3-VL stream differs (so the check above bites)."""
    if ad.layout != "steps":
        pytest.skip("no DeepStack in the Qwen2.5-VL backbone")
    frames, wave = _media(ad, 4, 2.0)
    pieces = list(ad.stream(_offline(frames, wave), prefix))
    assert any(p.layer_adds is not None and p.layer_adds.abs().sum() > 0 for p in pieces)
    engine = StreamingEngine(ad, FullMemory(), group_size=7)
    _, with_adds = engine.prefill(iter(pieces), collect_logits=True)
    for p in pieces:
        p.layer_adds = None
    _, without = engine.prefill(iter(pieces), collect_logits=True)
    assert (with_adds - without).abs().max() > 1e-3


def test_audio_follows_its_steps_in_time(ad, prefix):
    """Each step carries the audio tokens of its own time span (2 per 1-s step here)."""
    frames, wave = _media(ad, 8, 4.0)  # 4 steps of 1 s, 8 audio tokens
    pieces = list(ad.stream(_offline(frames, wave), prefix))
    media = [p for p in pieces if (p.modality == int(Modality.VISUAL)).any()]
    assert [int((p.modality == int(Modality.AUDIO)).sum()) for p in media] == [2, 2, 2, 2]


@torch.no_grad()
def test_a_live_session_fed_in_pieces_equals_the_offline_stream(ad):
    """Fed in three uneven pieces under eviction, the session commits what the offline stream does."""
    frames, wave = _media(ad, 9, 4.6)

    def session():
        engine = StreamingEngine(ad, make_policy("omnimem", len(ad.decoder_layers), budget=20), group_size=9)
        return StreamSession(engine, MediaConfig(), system_prompt="You watch.")

    live = session()
    for a, b, x, y in [(0, 3, 0, 20_000), (3, 4, 20_000, 45_000), (4, 9, 45_000, len(wave))]:
        live.feed(frames=frames[a:b], audio=wave[x:y])
    live.close()
    offline = StreamingEngine(ad, make_policy("omnimem", len(ad.decoder_layers), budget=20), group_size=9)
    state, _ = offline.prefill(ad.stream(_offline(frames, wave), live.media.chunker.prefix))
    assert live.state.tokens_seen == state.tokens_seen and live.state.next_pos == state.next_pos
    for x, y in zip(live.state.layers, state.layers, strict=True):
        assert torch.equal(x.keys, y.keys) and torch.equal(x.positions, y.positions)
    answer = live.ask("What was shown?", ["red", "green"])
    assert answer.choice in ("A", "B") and len(answer.option_scores) == 2


def test_a_session_needs_the_encoder_window(ad):
    from omnimem_train.errors import ConfigError

    engine = StreamingEngine(ad, FullMemory())
    with pytest.raises(ConfigError, match="audio_window_s: .* 30-s windows, got 2"):
        StreamSession(engine, MediaConfig(), audio_window_s=2.0)
