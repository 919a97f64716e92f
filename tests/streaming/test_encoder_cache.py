"""Encoder output cache and the objective's fast paths: the cache changes no loss, skips
decoding on a hit, keeps text embeddings trainable, is LRU-bounded, and with a trained audio tower
re-encodes the cached log-mel (same loss and gradients as running every tower with autograd); the
full-context objective (compression none) gives the streaming objective's loss."""

from dataclasses import replace

import pytest
import torch

from omnimem_train.config import load_config
from omnimem_train.config.schema import MediaConfig
from omnimem_train.data import read_manifest, to_dataset
from omnimem_train.memory.policies.full import FullMemory
from omnimem_train.models.base import MediaInput, Modality, StreamPiece
from omnimem_train.models.builtin import build_tiny_model
from omnimem_train.models.text_lm import TextLMAdapter
from omnimem_train.streaming.encoder_cache import EncoderCache, with_audio
from omnimem_train.streaming.engine import StreamingEngine
from omnimem_train.train import objective as objective_module
from omnimem_train.train.objective import StreamingObjective
from omnimem_train.train.run import build_objective
from omnimem_train.train.trainer import collate

RECIPE = "recipes/train/tiny_cpu.yaml"


def _objective(tiny_manifest, *extra):
    cfg = load_config(RECIPE, [f"dataset={tiny_manifest}", "report_to=none", "memory.group_size=16",
                               "memory.budget=20", *extra])
    torch.manual_seed(0)
    objective, adapter = build_objective(cfg)
    return objective, adapter


def _examples(tiny_manifest, n=2):
    rows = to_dataset(read_manifest(tiny_manifest)[:n])
    return collate([rows[i] for i in range(len(rows))])


def _trainable_grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def lora_cached(tiny_manifest):
    return _objective(tiny_manifest, "cache_encoder_outputs=true")


def test_cache_gives_the_uncached_loss_and_gradients_and_skips_decoding(lora_cached, tiny_manifest, monkeypatch):
    objective, adapter = lora_cached
    assert isinstance(objective.cache, EncoderCache) and objective.engine is not None
    for name, p in objective.inner.named_parameters():  # LoRA B starts at 0: give A a gradient too
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(1))
    examples = _examples(tiny_manifest)
    decodes = []
    real_media_input = objective_module.media_input

    def counting_media_input(*args, **kwargs):
        decodes.append(args[2:])
        return real_media_input(*args, **kwargs)

    monkeypatch.setattr(objective_module, "media_input", counting_media_input)
    cache, objective.cache = objective.cache, None
    try:
        objective.zero_grad()
        plain = objective(examples)
        plain.backward()
        g_plain = _trainable_grads(objective.inner)
    finally:
        objective.cache = cache
    assert len(decodes) == 2
    results = []
    for _ in range(2):  # a miss (fills the cache), then a hit
        objective.zero_grad()
        loss = objective(examples)
        loss.backward()
        results.append((loss.item(), _trainable_grads(objective.inner)))
    assert len(decodes) == 4  # the second cached call decoded nothing
    assert (cache.misses, cache.hits, len(cache)) == (2, 2, 2)
    assert g_plain and all("lora_" in n for n in g_plain)
    for value, grads in results:
        assert abs(value - plain.item()) <= 1e-6
        assert grads.keys() == g_plain.keys()
        for n in g_plain:
            assert torch.allclose(grads[n], g_plain[n], atol=1e-6), n


def test_cached_call_trains_text_embeddings_but_not_media(tiny_manifest):
    objective, adapter = _objective(tiny_manifest, "cache_encoder_outputs=true", "finetuning_type=full")
    examples = _examples(tiny_manifest, n=1)
    objective(examples)  # fills the cache
    objective.zero_grad()
    objective(examples).backward()  # a hit
    assert objective.cache.hits == 1
    grad = adapter.embed_tokens.weight.grad
    assert grad is not None
    # The media delimiters occur only in the cached stream's text pieces (not in the question or
    # answer): their embedding rows get a gradient only if the cache re-embeds text on each use.
    for name in ("vision_bos", "audio_bos"):
        assert grad[adapter.ids[name]].abs().sum() > 0, name
    tower = adapter.model.model.audio_tower.conv1.weight
    assert tower.grad is None or tower.grad.abs().sum() == 0  # frozen encoders stay out of the graph
    key = next(iter(objective.cache._items))
    pieces, _ = objective.cache.get(key, lambda: pytest.fail("a hit must not rebuild"), [])
    media = [p for p in pieces if bool((p.modality != int(Modality.TEXT)).any())]
    text = [p for p in pieces if bool((p.modality == int(Modality.TEXT)).all())]
    assert media and text
    assert all(not p.embeds.requires_grad for p in media)
    assert all(p.embeds.requires_grad and len(p) == len(p.token_ids) for p in text)


def test_full_finetuning_gradients_are_the_same_with_and_without_the_cache(tiny_manifest):
    # Without the cache the frozen towers run under no_grad; the prefix and media delimiters must
    # still be embedded with autograd (the embedding table trains), as the cache does.
    objective, adapter = _objective(tiny_manifest, "cache_encoder_outputs=true", "finetuning_type=full")
    examples = _examples(tiny_manifest, n=1)
    grads = []
    for cache in (objective.cache, None):
        objective.cache = cache
        objective.zero_grad()
        objective(examples).backward()
        grads.append(adapter.embed_tokens.weight.grad.clone())
    assert grads[1][adapter.ids["vision_bos"]].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=0)


def test_cache_needs_a_frozen_vision_tower_and_the_matching_audio_mode(lora_cached):
    objective, adapter = lora_cached
    for towers in ("vision", "all"):
        with pytest.raises(ValueError, match="frozen vision"):
            StreamingObjective(objective.inner, adapter, objective.engine, MediaConfig(), "", train_encoders=towers,
                               cache=EncoderCache(adapter))
    # A cache of frozen audio outputs would silently leave a trained audio tower out of the graph.
    for towers, train_audio in (("audio", False), ("none", True)):
        with pytest.raises(ValueError, match="train_audio"):
            StreamingObjective(objective.inner, adapter, objective.engine, MediaConfig(), "", train_encoders=towers,
                               cache=EncoderCache(adapter, train_audio=train_audio))


# --- a trained audio tower on top of cached vision outputs ------------------------------------


def _tower_grads(adapter, prefix):
    return {n: g for n, g in _trainable_grads(adapter.model).items() if n.startswith(prefix)}


@pytest.mark.parametrize("compression", ["streaming", "none"])
def test_trained_audio_tower_gets_the_gradients_of_the_all_towers_path(tiny_manifest, monkeypatch, compression):
    """train_encoders audio (cached or not) == train_encoders all, for the loss, the audio tower's and
    the LLM's gradients; the vision tower stays out of the graph, and a cache hit decodes nothing."""
    common = ["finetuning_type=full", f"compression={compression}"]
    reference, ref_adapter = _objective(tiny_manifest, *common, "train_encoders=all")
    examples = _examples(tiny_manifest)
    reference.zero_grad()
    ref_loss = reference(examples)
    ref_loss.backward()
    ref_audio = _tower_grads(ref_adapter, "model.audio_tower.")
    ref_llm = _tower_grads(ref_adapter, "model.language_model.layers.1.")
    assert ref_audio and _tower_grads(ref_adapter, "model.visual.")  # the reference trains both towers
    decodes = []
    real_media_input = objective_module.media_input
    monkeypatch.setattr(objective_module, "media_input",
                        lambda *a, **k: decodes.append(a[2:]) or real_media_input(*a, **k))
    for cached in (False, True):
        objective, adapter = _objective(tiny_manifest, *common, "train_encoders=audio",
                                        *(["cache_encoder_outputs=true"] if cached else []))
        assert objective.cache.train_audio
        for _ in range(2 if cached else 1):  # the cached objective: a miss, then a hit
            n_decoded = len(decodes)
            objective.zero_grad()
            loss = objective(examples)
            loss.backward()
            assert abs(loss.item() - ref_loss.item()) <= 1e-5
            audio = _tower_grads(adapter, "model.audio_tower.")
            assert audio.keys() == ref_audio.keys()
            for n in ref_audio:
                torch.testing.assert_close(audio[n], ref_audio[n], atol=1e-6, rtol=1e-4, msg=n)
            llm = _tower_grads(adapter, "model.language_model.layers.1.")
            for n in ref_llm:
                torch.testing.assert_close(llm[n], ref_llm[n], atol=1e-6, rtol=1e-4, msg=n)
            assert not _tower_grads(adapter, "model.visual.")
        if cached:
            assert (objective.cache.misses, objective.cache.hits) == (2, 2) and len(decodes) == n_decoded
        else:
            assert len(objective.cache) == 0  # the uncached run keeps nothing


def test_cache_hit_re_encodes_audio_with_the_current_tower(tiny_manifest):
    objective, adapter = _objective(tiny_manifest, "finetuning_type=full", "train_encoders=audio",
                                    "cache_encoder_outputs=true")
    examples = _examples(tiny_manifest, n=1)
    objective(examples)  # fills the cache
    key = next(iter(objective.cache._items))
    no_rebuild = lambda: pytest.fail("a hit must not rebuild")  # noqa: E731
    before = objective.cache.get(key, no_rebuild, [])[0]
    with torch.no_grad():
        adapter.audio_tower.proj.weight.mul_(2.0)  # an optimizer step on the audio tower
    after = objective.cache.get(key, no_rebuild, [])[0]
    audio_rows = visual_rows = 0
    for old, new in zip(before, after):
        is_audio = old.modality == int(Modality.AUDIO)
        torch.testing.assert_close(new.embeds[~is_audio], old.embeds[~is_audio], atol=0, rtol=0)
        if is_audio.any():
            assert new.embeds.requires_grad and not torch.allclose(new.embeds[is_audio], old.embeds[is_audio])
        audio_rows += int(is_audio.sum())
        visual_rows += int((old.modality == int(Modality.VISUAL)).sum())
    assert audio_rows > 0 and visual_rows > 0


def test_with_audio_replaces_audio_rows_in_stream_order():
    d = 3
    mixed = StreamPiece(torch.zeros(4, d), torch.tensor([1, 2, 1, 2]), torch.zeros(1, 4, dtype=torch.long))
    text = StreamPiece(torch.ones(2, d), torch.zeros(2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))
    audio_only = StreamPiece(torch.zeros(1, d), torch.tensor([2]), torch.zeros(1, 1, dtype=torch.long))
    audio = torch.arange(3 * d, dtype=torch.float32).view(3, d).requires_grad_()
    out = with_audio([mixed, text, audio_only], audio)
    assert torch.equal(out[0].embeds[[1, 3]], audio[:2]) and torch.equal(out[0].embeds[[0, 2]], torch.zeros(2, d))
    assert out[1] is text and torch.equal(out[2].embeds, audio[2:])
    sum(p.embeds.sum() for p in out).backward()
    assert torch.equal(audio.grad, torch.ones(3, d))  # every encoded row reaches the stream once
    with pytest.raises(ValueError, match="3 audio tokens"):
        with_audio([mixed, audio_only], audio[:2])


@pytest.mark.parametrize("cached", [False, True])
def test_full_context_objective_equals_streaming_objective(tiny_manifest, cached):
    extra = ["compression=none", "finetuning_type=full"] + (["cache_encoder_outputs=true"] if cached else [])
    objective, adapter = _objective(tiny_manifest, *extra)
    assert objective.engine is None  # compression: none trains through the packed full-context loss
    examples = _examples(tiny_manifest, n=3)
    objective.zero_grad()
    batched = objective(examples)
    batched.backward()
    g_batched = adapter.model.get_parameter("model.language_model.layers.2.self_attn.q_proj.weight").grad.clone()
    objective.engine = StreamingEngine(adapter, FullMemory(), group_size=16)  # really streaming, group by group
    objective.zero_grad()
    streamed = objective(examples)
    streamed.backward()
    g_streamed = adapter.model.get_parameter("model.language_model.layers.2.self_attn.q_proj.weight").grad
    assert len(objective.last_reports) == 3
    assert abs(batched.item() - streamed.item()) <= 1e-5
    assert g_streamed.abs().sum() > 0 and torch.allclose(g_batched, g_streamed, atol=1e-5)


def test_full_context_objective_packs_questions_about_one_clip_into_one_row(tiny_manifest):
    objective, adapter = _objective(tiny_manifest, "compression=none", "finetuning_type=full",
                                    "cache_encoder_outputs=true")
    first, second = _examples(tiny_manifest, n=2)
    batch = [first, replace(second, question="Which tone?", answer="C"), second,
             replace(first, question="What was shown last?", options=["a", "b"], answer="B. b")]
    rows = []
    real = adapter.decoder_hidden
    adapter.decoder_hidden = lambda embeds, *a: rows.append(embeds.shape[0]) or real(embeds, *a)
    try:
        packed = objective(batch)
    finally:
        del adapter.decoder_hidden
    assert rows == [2] and len(objective.last_reports) == 4  # two streams for four questions
    objective.engine = StreamingEngine(adapter, FullMemory(), group_size=16)
    streamed = objective(batch)
    assert abs(packed.item() - streamed.item()) <= 1e-5, (packed.item(), streamed.item())


def test_streaming_objective_prefills_a_clip_once_for_all_its_questions(tiny_manifest):
    """Compressed streaming (budget 20 < the stream): questions about one clip share one prefill and
    get the losses and gradients they get one by one."""
    objective, adapter = _objective(tiny_manifest, "finetuning_type=full")
    assert objective.engine.policy is not None
    first, second = _examples(tiny_manifest, n=2)
    batch = [first, second, replace(first, question="What was shown last?", options=["a", "b"], answer="B. b")]
    prefills = []
    real = objective.engine.prefill
    objective.engine.prefill = lambda *a, **k: prefills.append(1) or real(*a, **k)
    try:
        objective.zero_grad()
        shared = objective(batch)
        shared.backward()
        g_shared = _trainable_grads(objective.inner)
        assert len(prefills) == 2 and len(objective.last_reports) == 3
        assert all(r.mean("visual") + r.mean("audio") <= 20 for r in objective.last_reports)
        objective.zero_grad()
        singles = [objective([ex]) for ex in batch]
        (sum(singles) / 3).backward()
    finally:
        del objective.engine.prefill
    assert len(prefills) == 5
    assert abs(shared.item() - sum(x.item() for x in singles) / 3) <= 1e-5
    g_singles = _trainable_grads(objective.inner)
    name = "model.language_model.layers.1.self_attn.q_proj.weight"
    assert g_shared[name].abs().sum() > 0
    for n in g_shared:
        torch.testing.assert_close(g_shared[n], g_singles[n], atol=1e-5, rtol=1e-4, msg=n)


# --- EncoderCache on its own ------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama():
    model, tok = build_tiny_model("tiny-llama", num_layers=1)
    return _PiecesAdapter(model, tok)


class _PiecesAdapter(TextLMAdapter):
    """A test double: `stream` returns the pieces carried in the MediaInput's context."""

    def stream(self, media, prefix_ids):
        return iter(media.context)


def _builder(ad, calls, tag):
    def load_media():
        calls.append(tag)
        text = ad.text_piece([3, 4, 5], 0)
        media = StreamPiece(torch.randn(2, text.embeds.shape[1], requires_grad=True),
                            torch.full((2,), int(Modality.VISUAL)), torch.arange(3, 5).view(1, 2), 1.0)
        return MediaInput(context=[text, media], expected_tokens={Modality.VISUAL: 2})

    return load_media


def test_lru_bound_evicts_the_least_recently_used(llama):
    cache, calls = EncoderCache(llama, max_items=2), []
    for key in ("a", "b", "a", "c"):  # "a" used again after "b": "b" is the least recently used
        cache.get((key,), _builder(llama, calls, key), [])
    assert calls == ["a", "b", "c"] and len(cache) == 2
    cache.get(("a",), _builder(llama, calls, "a"), [])
    assert calls == ["a", "b", "c"]  # still cached
    cache.get(("b",), _builder(llama, calls, "b"), [])
    assert calls == ["a", "b", "c", "b"]  # was evicted
    assert (cache.hits, cache.misses) == (2, 4)

    one = EncoderCache(llama, max_items=1)
    calls = []
    for key in ("a", "a", "b", "a"):
        one.get((key,), _builder(llama, calls, key), [])
    assert calls == ["a", "b", "a"] and len(one) == 1


def test_entries_are_unbounded_by_default(llama):
    cache, calls = EncoderCache(llama), []
    for key in range(5):
        cache.get((key,), _builder(llama, calls, key), [])
    for key in range(5):
        cache.get((key,), _builder(llama, calls, key), [])
    assert len(cache) == 5 and calls == list(range(5)) and cache.hits == 5


def test_text_is_re_embedded_with_the_current_table_media_is_detached(llama):
    cache, calls = EncoderCache(llama), []
    (text, media), expected = cache.get(("k",), _builder(llama, calls, "k"), [])
    assert expected == {Modality.VISUAL: 2}
    assert text.embeds.requires_grad and not media.embeds.requires_grad
    assert torch.equal(text.embeds, llama.embed_tokens.weight[[3, 4, 5]])
    with torch.no_grad():
        llama.embed_tokens.weight[4] += 1.0  # an optimizer step on the embedding table
    try:
        (text2, media2), _ = cache.get(("k",), _builder(llama, calls, "k"), [])
        assert calls == ["k"]
        assert torch.equal(text2.embeds, llama.embed_tokens.weight[[3, 4, 5]])  # the new row, not the old
        assert torch.equal(media2.embeds, media.embeds)
        assert torch.equal(text2.positions, text.positions) and torch.equal(text2.token_ids, text.token_ids)
    finally:
        with torch.no_grad():
            llama.embed_tokens.weight[4] -= 1.0
    expected[Modality.AUDIO] = 7  # the caller's copy: the cached dict is not shared
    assert cache.get(("k",), _builder(llama, calls, "k"), [])[1] == {Modality.VISUAL: 2}


def test_text_piece_without_ids_is_rejected(llama):
    bare = StreamPiece(torch.zeros(2, 64), torch.zeros(2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids"):
        EncoderCache(llama).get(("x",), lambda: MediaInput(context=[bare]), [])
