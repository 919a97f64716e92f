"""Frozen-encoder output cache and the objective's fast paths: the cache changes no loss, skips
decoding on a hit, keeps text embeddings trainable, is LRU-bounded; the full-context objective
(compression none) gives the streaming objective's loss."""

import pytest
import torch

from omnimem_train.config import load_config
from omnimem_train.config.schema import MediaConfig
from omnimem_train.data import read_manifest, to_dataset
from omnimem_train.memory.policies.full import FullMemory
from omnimem_train.models.base import Modality, StreamPiece
from omnimem_train.models.builtin import build_tiny_model
from omnimem_train.models.text_lm import TextLMAdapter
from omnimem_train.train import objective as objective_module
from omnimem_train.train.encoder_cache import EncoderCache
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
    assert isinstance(objective.cache, EncoderCache) and not objective.full_context
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
    pieces, _ = objective.cache.get(key, lambda: pytest.fail("a hit must not rebuild"))
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


def test_cache_needs_frozen_encoders(lora_cached):
    objective, adapter = lora_cached
    with pytest.raises(ValueError, match="frozen"):
        StreamingObjective(objective.inner, adapter, objective.engine, MediaConfig(), "", train_encoders=True,
                           cache=EncoderCache(adapter))


@pytest.mark.parametrize("cached", [False, True])
def test_full_context_objective_equals_streaming_objective(tiny_manifest, cached):
    extra = ["compression=none", "finetuning_type=full"] + (["cache_encoder_outputs=true"] if cached else [])
    objective, adapter = _objective(tiny_manifest, *extra)
    assert objective.full_context and isinstance(objective.engine.policy, FullMemory)
    examples = _examples(tiny_manifest, n=3)
    objective.zero_grad()
    batched = objective(examples)
    batched.backward()
    g_batched = adapter.model.get_parameter("model.language_model.layers.2.self_attn.q_proj.weight").grad.clone()
    objective.full_context = False
    objective.engine.group_size = 16  # really streaming, group by group
    objective.zero_grad()
    streamed = objective(examples)
    streamed.backward()
    g_streamed = adapter.model.get_parameter("model.language_model.layers.2.self_attn.q_proj.weight").grad
    assert len(objective.last_reports) == 3
    assert abs(batched.item() - streamed.item()) <= 1e-5
    assert g_streamed.abs().sum() > 0 and torch.allclose(g_batched, g_streamed, atol=1e-5)


# --- EncoderCache on its own ------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama():
    model, tok = build_tiny_model("tiny-llama", num_layers=1)
    return TextLMAdapter(model, tok)


def _builder(ad, calls, tag):
    def build():
        calls.append(tag)
        text = ad.text_piece([3, 4, 5], 0)
        media = StreamPiece(torch.randn(2, text.embeds.shape[1], requires_grad=True),
                            torch.full((2,), int(Modality.VISUAL)), torch.arange(3, 5).view(1, 2), 1.0)
        return iter([text, media]), {Modality.VISUAL: 2}

    return build


def test_lru_bound_evicts_the_least_recently_used(llama):
    cache, calls = EncoderCache(llama, max_items=2), []
    for key in ("a", "b", "a", "c"):  # "a" used again after "b": "b" is the least recently used
        cache.get((key,), _builder(llama, calls, key))
    assert calls == ["a", "b", "c"] and len(cache) == 2
    cache.get(("a",), _builder(llama, calls, "a"))
    assert calls == ["a", "b", "c"]  # still cached
    cache.get(("b",), _builder(llama, calls, "b"))
    assert calls == ["a", "b", "c", "b"]  # was evicted
    assert (cache.hits, cache.misses) == (2, 4)

    one = EncoderCache(llama, max_items=1)
    calls = []
    for key in ("a", "a", "b", "a"):
        one.get((key,), _builder(llama, calls, key))
    assert calls == ["a", "b", "a"] and len(one) == 1


def test_entries_are_unbounded_by_default(llama):
    cache, calls = EncoderCache(llama), []
    for key in range(5):
        cache.get((key,), _builder(llama, calls, key))
    for key in range(5):
        cache.get((key,), _builder(llama, calls, key))
    assert len(cache) == 5 and calls == list(range(5)) and cache.hits == 5


def test_text_is_re_embedded_with_the_current_table_media_is_detached(llama):
    cache, calls = EncoderCache(llama), []
    (text, media), expected = cache.get(("k",), _builder(llama, calls, "k"))
    assert expected == {Modality.VISUAL: 2}
    assert text.embeds.requires_grad and not media.embeds.requires_grad
    assert torch.equal(text.embeds, llama.embed_tokens.weight[[3, 4, 5]])
    with torch.no_grad():
        llama.embed_tokens.weight[4] += 1.0  # an optimizer step on the embedding table
    try:
        (text2, media2), _ = cache.get(("k",), _builder(llama, calls, "k"))
        assert calls == ["k"]
        assert torch.equal(text2.embeds, llama.embed_tokens.weight[[3, 4, 5]])  # the new row, not the old
        assert torch.equal(media2.embeds, media.embeds)
        assert torch.equal(text2.positions, text.positions) and torch.equal(text2.token_ids, text.token_ids)
    finally:
        with torch.no_grad():
            llama.embed_tokens.weight[4] -= 1.0
    expected[Modality.AUDIO] = 7  # the caller's copy: the cached dict is not shared
    assert cache.get(("k",), _builder(llama, calls, "k"))[1] == {Modality.VISUAL: 2}


def test_text_piece_without_ids_is_rejected(llama):
    bare = StreamPiece(torch.zeros(2, 64), torch.zeros(2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids"):
        EncoderCache(llama).get(("x",), lambda: ([bare], {}))
