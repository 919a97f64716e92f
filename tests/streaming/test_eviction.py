"""Eviction plumbing: per-layer budgets hold after every group, text and positions survive, and
decoding after eviction uses the original positions."""

import pytest
import torch
from transformers import DynamicCache

from omnimem_train.memory.registry import make_policy
from omnimem_train.models.base import MediaInput, Modality
from omnimem_train.models.prompt import split_chat_prompt
from omnimem_train.streaming.engine import StreamingEngine
from tests.memory.streams import random_media
from tests.streaming.omni_inputs import full_inputs


def _recent(ad, budget):
    """Keep the most recent `budget` audio/visual tokens per layer (pooled, no sinks)."""
    return make_policy("recency", len(ad.decoder_layers), budget=budget, sink_tokens=0, modality_aware=False)


def _omni_media(seconds=6.0, seed=0):
    return random_media(seconds, seed=seed)


def _pieces(ad, frames, mel, prefix):
    return list(ad.stream(MediaInput(frames=iter(frames), fps=2.0, mel_windows=iter([mel]), duration_s=6.0), prefix))


@pytest.mark.parametrize("budget,group_size", [(0, 16), (10, 16), (40, 33), (1000, 64)])
def test_recent_budget_holds_after_every_group_and_layer(tiny_omni, budget, group_size):
    ad = tiny_omni
    prefix, _ = split_chat_prompt(ad.tokenizer, "s", "q")
    pieces = _pieces(ad, *_omni_media(), prefix)
    all_pos = torch.cat([p.positions for p in pieces], 1)
    all_mod = torch.cat([p.modality for p in pieces])
    engine = StreamingEngine(ad, _recent(ad, budget), group_size=group_size)
    checked = []

    def check(state, n_new):
        seen = state.tokens_seen
        n_text = int((all_mod[:seen] == Modality.TEXT).sum())
        for mem in state.layers:
            media = mem.count(Modality.VISUAL) + mem.count(Modality.AUDIO)
            assert media <= budget
            assert media == min(budget, seen - n_text)  # recent keeps exactly min(budget, available)
            assert mem.count(Modality.TEXT) == n_text  # all text kept
            assert torch.all(mem.index[1:] > mem.index[:-1])  # temporal order
            assert torch.equal(mem.positions, all_pos[:, mem.index])  # original positions
            assert torch.equal(mem.modality, all_mod[mem.index])
            if budget and seen - n_text > budget:  # the kept media are the most recent ones
                media_idx = mem.index[mem.modality != Modality.TEXT]
                assert media_idx.max() == int((all_mod[:seen] != Modality.TEXT).nonzero().max())
        checked.append(seen)

    with torch.no_grad():
        engine.prefill(iter(pieces), on_group=check)
    assert len(checked) >= 2 and checked[-1] == all_mod.numel()


def _evict_cache(cache: DynamicCache, keep: torch.Tensor) -> None:
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[:, :, keep], layer.values[:, :, keep]


def test_decoding_after_eviction_uses_original_positions(tiny_omni):
    """Reference: transformers' own forward + DynamicCache, evicted by hand, question run with
    explicit positions. Our engine (one group = whole stream, so eviction happens once, at the end)
    must match it; transformers' *derived* positions from the shrunken cache must not."""
    ad = tiny_omni
    frames, mel = _omni_media(seed=1)
    prefix, question = split_chat_prompt(ad.tokenizer, "You watch.", "What was shown?")
    input_ids, kw = full_inputs(ad.tokenizer, prefix, [], frames=frames, fps=2.0, mel=mel)
    budget = 30
    engine = StreamingEngine(ad, _recent(ad, budget), group_size=100_000)
    with torch.no_grad():
        state, _ = engine.prefill(iter(_pieces(ad, frames, mel, prefix)))
        keep = state.layers[0].index
        assert all(torch.equal(m.index, keep) for m in state.layers)
        assert keep.numel() < input_ids.shape[1]
        q_piece = ad.text_piece(question, state.next_pos)
        got = engine.forward(state, q_piece, want_logits="all")

        out = ad.model(input_ids=input_ids, **kw, use_cache=True)
        cache = out.cache
        _evict_cache(cache, keep)
        q_ids = torch.tensor([question])
        mask = torch.ones(1, keep.numel() + len(question), dtype=torch.long)
        ref = ad.model(input_ids=q_ids, cache=cache, attention_mask=mask,
                       position_ids=q_piece.positions.unsqueeze(1)).logits[0]
        assert (got - ref).abs().max().item() <= 1e-4

        out = ad.model(input_ids=input_ids, **kw, use_cache=True)
        cache = out.cache
        _evict_cache(cache, keep)
        derived = ad.model(input_ids=q_ids, cache=cache).logits[0]  # positions from the cache length
    assert (derived - ref).abs().max().item() > 1e-3  # the pitfall this design avoids
    # Positions continue after the stream exactly as in the full sequence.
    full_pos, _ = ad.model.model.get_rope_index(
        input_ids, video_grid_thw=kw["video_grid_thw"], attention_mask=kw["attention_mask"], use_audio_in_video=True,
        audio_seqlens=kw["feature_attention_mask"].sum(-1), second_per_grids=kw["video_second_per_grid"])
    assert q_piece.positions[0, 0].item() == full_pos[0, 0, -1].item() + 1


def test_group_seconds_cuts_at_chunk_boundaries(tiny_omni):
    ad = tiny_omni
    prefix, _ = split_chat_prompt(ad.tokenizer, "s", "q")
    sizes = []
    engine = StreamingEngine(ad, make_policy("full", len(ad.decoder_layers)), group_size=None, group_seconds=4.0)
    with torch.no_grad():
        engine.prefill(iter(_pieces(ad, *_omni_media(), prefix)), on_group=lambda s, n: sizes.append(n))
    # 6 s at 2 fps on 56 px: 8 video + 50 audio tokens per 2-s chunk. Groups: [prefix, bos, 0-4 s],
    # then [4-6 s, eos] (the stream ends before the 8-s boundary).
    assert sizes == [len(prefix) + 2 + 2 * 58, 58 + 2]


def test_memory_report_counts_and_bytes(tiny_omni):
    ad = tiny_omni
    prefix, _ = split_chat_prompt(ad.tokenizer, "s", "q")
    engine = StreamingEngine(ad, _recent(ad, 25), group_size=32)
    with torch.no_grad():
        state, _ = engine.prefill(iter(_pieces(ad, *_omni_media(), prefix)))
    rep = state.report()
    cfg = ad.cfg.text_config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    assert len(rep.layers) == cfg.num_hidden_layers
    for layer in rep.layers:
        assert layer.visual + layer.audio == 25
        n = layer.text + layer.visual + layer.audio
        assert layer.kv_bytes == 2 * cfg.num_key_value_heads * n * head_dim * 4
    assert rep.kv_bytes == sum(layer.kv_bytes for layer in rep.layers)
    assert "visual" in rep.line() and "\n" not in rep.line()
