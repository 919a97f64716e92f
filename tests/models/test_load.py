"""Loading model folders: the right adapter, tokenizer/processor from the same folder, offline,
and one-line errors for bad folders (checked before any weight is read)."""

import json

import pytest
import torch

from omnimem_train.errors import ModelError
from omnimem_train.models.builtin import build_tiny_model
from omnimem_train.models.load import load_adapter
from omnimem_train.models.qwen2_5_omni import Qwen2_5OmniAdapter
from omnimem_train.models.text_lm import TextLMAdapter


@pytest.fixture(scope="module")
def omni_dir(tmp_path_factory):
    from transformers import WhisperFeatureExtractor

    path = tmp_path_factory.mktemp("omni")
    model, tok = build_tiny_model("tiny-omni", seed=7)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    fe = WhisperFeatureExtractor(feature_size=128)
    fe.save_pretrained(path)
    cfg = json.loads((path / "preprocessor_config.json").read_text())
    cfg["image_mean"], cfg["image_std"] = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    (path / "preprocessor_config.json").write_text(json.dumps(cfg))
    return path, model


def test_omni_dir_loads_thinker_tokenizer_and_processor_settings(omni_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, model = omni_dir
    ad = load_adapter(str(path), device="cpu")
    assert isinstance(ad, Qwen2_5OmniAdapter)
    assert ad.image_mean == (0.5, 0.5, 0.5) and ad.image_std == (0.25, 0.25, 0.25)
    assert ad.tokenizer.convert_tokens_to_ids("<|VIDEO|>") == ad.cfg.video_token_id
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(ad.model(input_ids=ids).logits, model(input_ids=ids).logits)


def test_text_lm_dir_loads(tmp_path):
    model, tok = build_tiny_model("tiny-llama")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    ad = load_adapter(str(tmp_path), device="cpu")
    assert isinstance(ad, TextLMAdapter) and len(ad.decoder_layers) == 4


def _one_line(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg


def test_bad_model_folders(tmp_path):
    with pytest.raises(ModelError) as e:
        load_adapter(str(tmp_path / "missing"))
    _one_line(e, "missing", "not found")
    with pytest.raises(ModelError) as e:
        load_adapter(str(tmp_path))  # exists, no config.json
    _one_line(e, str(tmp_path), "config.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError) as e:
        load_adapter(str(tmp_path))
    _one_line(e, "config.json", "unreadable")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelError) as e:
        load_adapter(str(tmp_path))
    _one_line(e, "bert", "not supported")
    f = tmp_path / "file.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelError) as e:
        load_adapter(str(f))
    _one_line(e, "not a directory")


def test_hub_id_not_in_cache_is_a_clear_offline_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelError) as e:
        load_adapter("Qwen/Qwen2.5-Omni-7B")
    _one_line(e, "Qwen/Qwen2.5-Omni-7B", "cannot load")


def test_unknown_builtin_lists_known():
    with pytest.raises(ModelError) as e:
        load_adapter("builtin:nope")
    _one_line(e, "builtin:tiny-omni", "builtin:smollm2-135m")


# --- loading safety: config checked first, safetensors only ------------------------------------


def _copy_model(src, dst, weights=True):
    """A copy of a saved model folder (optionally without its weights)."""
    import shutil

    shutil.copytree(src, dst, ignore=None if weights else shutil.ignore_patterns("*.safetensors"))
    return dst


@pytest.fixture
def no_weight_reads(monkeypatch):
    """Fail the test if any model class starts reading weights."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("from_pretrained was called: weights would have been read")

    for name in ("Qwen2_5OmniThinkerForConditionalGeneration", "Qwen2_5OmniForConditionalGeneration",
                 "AutoModelForCausalLM"):
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", refuse)


def test_pickled_weights_are_refused_with_the_conversion_command(omni_dir, tmp_path, no_weight_reads):
    path = _copy_model(omni_dir[0], tmp_path / "m", weights=False)
    (path / "pytorch_model.bin").write_bytes(b"not even a pickle")
    with pytest.raises(ModelError) as e:
        load_adapter(str(path), device="cpu")
    _one_line(e, str(path), "pytorch_model.bin", "refused", "use_safetensors=False).save_pretrained(",
              "Qwen2_5OmniThinkerForConditionalGeneration")
    (path / "pytorch_model.bin").unlink()
    with pytest.raises(ModelError) as e:
        load_adapter(str(path), device="cpu")
    _one_line(e, str(path), "no model weights")


def test_safetensors_win_over_a_pickle_next_to_them(omni_dir, tmp_path):
    path = _copy_model(omni_dir[0], tmp_path / "m")
    (path / "pytorch_model.bin").write_bytes(b"garbage: loading it would fail")
    assert isinstance(load_adapter(str(path), device="cpu"), Qwen2_5OmniAdapter)


@pytest.mark.parametrize("config,needles", [
    ("{garbage", ["unreadable"]),
    ('["a list"]', ["no 'model_type'"]),
    ('{"model_type": "whisper"}', ["'whisper'", "not supported"]),
    ('{"model_type": "qwen2_5_omni_thinker", "text_config": {"hidden_size": 8, "num_hidden_layers": 1}, '
     '"audio_config": {}}', ["'vision_config'", "qwen2_5_omni_thinker"]),
    ('{"model_type": "qwen2_5_omni", "thinker_config": {"text_config": {}}}', ["'thinker_config.audio_config'"]),
    ('{"model_type": "qwen2_5_omni_thinker", "text_config": {"hidden_size": 8}, "audio_config": {}, '
     '"vision_config": {}}', ["'num_hidden_layers'", "'text_config'"]),
    ('{"model_type": "llama", "hidden_size": 8}', ["'num_hidden_layers'", "top level"]),
])
def test_bad_config_is_refused_before_any_weight_is_read(omni_dir, tmp_path, no_weight_reads, config, needles):
    path = _copy_model(omni_dir[0], tmp_path / "m", weights=False)
    (path / "model.safetensors").write_bytes(b"garbage")  # would fail loudly if it were opened
    (path / "config.json").write_text(config)
    with pytest.raises(ModelError) as e:
        load_adapter(str(path), device="cpu")
    _one_line(e, "config.json", *needles)


def test_remote_code_stays_off_unless_asked(omni_dir, tmp_path, monkeypatch):
    import transformers

    seen = []

    def record(source, **kw):
        seen.append((kw["trust_remote_code"], kw["use_safetensors"]))
        raise OSError("stop here")

    monkeypatch.setattr(transformers.Qwen2_5OmniThinkerForConditionalGeneration, "from_pretrained", record)
    for trust in (False, True):
        with pytest.raises(ModelError, match="stop here"):
            load_adapter(str(omni_dir[0]), device="cpu", trust_remote_code=trust)
    assert seen == [(False, True), (True, True)]
