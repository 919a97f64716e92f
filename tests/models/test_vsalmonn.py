"""The video-SALMONN 2+ family (models/vsalmonn.py): the audio bridge has the release's weight names
and computes the LAVIS window Q-Former; both models save the release's key layout and load it back
strictly (ours and a release-form folder alike); the built-ins and the real-size recipes build."""

import hashlib
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from omnimem_train.errors import ModelError
from omnimem_train.models.builtin import (
    VL_SPECIAL_TOKENS,
    build_tiny_model,
    build_tokenizer,
    resolve_builtin,
    tiny_vsalmonn2plus_config,
)
from omnimem_train.models.load import _strict_from_pretrained, load_adapter
from omnimem_train.models.vsalmonn import (
    OmniMemQwen3VLForConditionalGeneration,
    SalmonnAudioBridge,
    SalmonnAudioConfig,
    VSalmonn2PlusForConditionalGeneration,
    check_token_ids,
    load_vsalmonn,
    model_from_config_file,
)

NAMES = ("tiny-vsalmonn2plus", "tiny-omnimem-qwen3vl")
AUDIO_PREFIX = {"tiny-vsalmonn2plus": "audio.", "tiny-omnimem-qwen3vl": "model.audio."}
CROSS_KEY = "qformer.bert.encoder.layer.0.crossattention.self.key.weight"


def _audio_config(query_length=1, qformer_layers=2, whisper_layers=2, stride=0.5, out=24):
    return SalmonnAudioConfig(
        num_mel_bins=128, encoder_layers=whisper_layers, encoder_attention_heads=2, encoder_ffn_dim=64, d_model=32,
        max_source_positions=1500, second_per_window=0.5, second_stride=stride,
        qformer_config=dict(hidden_size=48, num_hidden_layers=qformer_layers, num_attention_heads=4,
                            intermediate_size=96, query_length=query_length, encoder_width=32, out_hidden_size=out))


def _release_bridge_keys(whisper_layers: int, qformer_layers: int) -> set[str]:
    """The release's audio-module keys (its WhisperEncoder + LAVIS BertLMHeadModel.bert + queries + proj)."""
    wb = ("weight", "bias")
    keys = {f"{m}.{p}" for m in ("conv1", "conv2", "layer_norm", "audio_proj") for p in wb}
    keys |= {"embed_positions.weight", "q_tokens", "qformer.bert.embeddings.position_ids",
             "qformer.bert.embeddings.LayerNorm.weight", "qformer.bert.embeddings.LayerNorm.bias"}
    for i in range(whisper_layers):
        keys.add(f"layers.{i}.self_attn.k_proj.weight")  # Whisper's k_proj has no bias
        keys |= {f"layers.{i}.self_attn.{m}.{p}" for m in ("q_proj", "v_proj", "out_proj") for p in wb}
        keys |= {f"layers.{i}.{m}.{p}" for m in ("self_attn_layer_norm", "fc1", "fc2", "final_layer_norm") for p in wb}
    for i in range(qformer_layers):
        at = f"qformer.bert.encoder.layer.{i}"
        for att in ("attention", "crossattention"):
            keys |= {f"{at}.{att}.self.{m}.{p}" for m in ("query", "key", "value") for p in wb}
            keys |= {f"{at}.{att}.output.{m}.{p}" for m in ("dense", "LayerNorm") for p in wb}
        keys |= {f"{at}.intermediate_query.dense.{p}" for p in wb}
        keys |= {f"{at}.output_query.{m}.{p}" for m in ("dense", "LayerNorm") for p in wb}
    return keys


# --- the audio bridge ----------------------------------------------------------------------------


def test_bridge_keys_and_shapes_are_the_releases():
    bridge = SalmonnAudioBridge(_audio_config(query_length=3, qformer_layers=2, whisper_layers=2))
    sd = bridge.state_dict()
    assert set(sd) == _release_bridge_keys(2, 2)
    assert sd["q_tokens"].shape == (1, 3, 48)
    assert sd[CROSS_KEY].shape == (48, 32)  # cross-attention K/V read the Whisper width
    assert sd["qformer.bert.encoder.layer.1.crossattention.self.value.weight"].shape == (48, 32)
    assert sd["qformer.bert.encoder.layer.0.crossattention.self.query.weight"].shape == (48, 48)
    assert sd["qformer.bert.encoder.layer.0.intermediate_query.dense.weight"].shape == (96, 48)
    assert sd["qformer.bert.encoder.layer.0.output_query.dense.weight"].shape == (48, 96)
    assert sd["audio_proj.weight"].shape == (24, 48)
    assert sd["embed_positions.weight"].shape == (1500, 32)
    assert torch.equal(sd["qformer.bert.embeddings.position_ids"], torch.arange(512)[None])
    assert sd["qformer.bert.embeddings.LayerNorm.weight"].shape == (48,)
    assert bridge.qformer.bert.embeddings.LayerNorm.eps == 1e-12


def _lavis_reference(bridge, mel, causal=False):
    """The release's audio forward written out: Whisper (HF's encoder, final layer_norm included),
    F.unfold windows, then the LAVIS Q-Former math read from the weights by their release names."""
    sd = {k: v.double() for k, v in bridge.state_dict().items() if v.is_floating_point()}
    qcfg = bridge.config.qformer_config
    heads, eps = qcfg.num_attention_heads, qcfg.layer_norm_eps

    def lin(x, name):
        return F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"])

    def ln(x, name):
        return F.layer_norm(x, (x.shape[-1],), sd[f"{name}.weight"], sd[f"{name}.bias"], eps)

    def attn(prefix, hq, hkv, mask_causal):
        b, t, h = hq.shape
        d = h // heads
        q, k, v = (lin(x, f"{prefix}.self.{m}").view(b, -1, heads, d).transpose(1, 2)
                   for x, m in ((hq, "query"), (hkv, "key"), (hkv, "value")))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)
        if mask_causal:
            scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        a = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(b, t, h)
        return ln(lin(a, f"{prefix}.output.dense") + hq, f"{prefix}.output.LayerNorm")

    with torch.no_grad():
        speech = WhisperEncoder.forward(bridge, mel).last_hidden_state.double()  # (B, 1500, C)
    b, _, c = speech.shape
    kernel = round(1500 * bridge.config.second_per_window / 30.0)
    stride = round(1500 * bridge.config.second_stride / 30.0)
    u = F.unfold(speech.transpose(1, 2).unsqueeze(2), kernel_size=(1, kernel), stride=(1, stride))
    n_win = u.shape[-1]
    windows = u.view(b, -1, kernel, n_win).permute(0, 3, 2, 1).reshape(-1, kernel, c)
    h = ln(sd["q_tokens"].expand(windows.shape[0], -1, -1), "qformer.bert.embeddings.LayerNorm")
    for i in range(qcfg.num_hidden_layers):
        at = f"qformer.bert.encoder.layer.{i}"
        a = attn(f"{at}.attention", h, h, causal)
        x = attn(f"{at}.crossattention", a, windows, False)
        h = ln(lin(F.gelu(lin(x, f"{at}.intermediate_query.dense")), f"{at}.output_query.dense") + x,
               f"{at}.output_query.LayerNorm")
    out = lin(h, "audio_proj")
    return out.view(b, -1, out.shape[-1])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("stride", [0.5, 0.3])
def test_encode_matches_the_lavis_qformer_math(attn, stride):
    """Three queries (so a causal self-attention would show), weights drawn large so every block
    matters; at stride 0.3 s the 0.5-s windows overlap, as F.unfold cuts them in the release."""
    torch.manual_seed(0)
    bridge = SalmonnAudioBridge._from_config(_audio_config(query_length=3, stride=stride), attn_implementation=attn)
    bridge.eval()
    with torch.no_grad():
        for name, p in bridge.named_parameters():
            if not name.startswith(("layers.", "conv", "embed_positions")):
                p.normal_(0, 0.3)
    assert bridge.qformer.bert.encoder.layer[0].attention.self.config._attn_implementation == attn
    mel = torch.randn(2, 128, 3000)
    with torch.no_grad():
        got = bridge.encode(mel).double()
    ref = _lavis_reference(bridge, mel)
    windows = (1500 - 25) // round(50 * stride) + 1
    assert got.shape == ref.shape == (2, windows * 3, 24)
    assert (got - ref).abs().max() < 1e-5  # outputs of size ~3
    assert (got - _lavis_reference(bridge, mel, causal=True)).abs().max() > 1e-3  # causal queries would differ


def test_encode_gives_60_q_tokens_per_30s_window_each_from_its_own_window():
    torch.manual_seed(1)
    bridge = SalmonnAudioBridge(_audio_config(query_length=2)).eval()
    assert bridge.windows_per_chunk == 60 and bridge.tokens_per_chunk == 120
    mel = torch.randn(3, 128, 3000)
    with torch.no_grad():
        out = bridge.encode(mel)
        alone = bridge.encode(mel[1:2])
    assert out.shape == (3, 120, 24)
    assert torch.allclose(out[1:2], alone, atol=1e-5)
    assert not torch.allclose(out[0], out[1], atol=1e-3)
    with pytest.raises(ValueError, match="3000"):
        bridge.encode(torch.randn(1, 128, 2999))


def test_bridge_refuses_settings_it_does_not_compute():
    cfg = _audio_config()
    cfg.qformer_config.encoder_width = 16
    with pytest.raises(ValueError, match="encoder_width"):
        SalmonnAudioBridge(cfg)
    cfg = _audio_config()
    cfg.qformer_config.cross_attention_freq = 2
    with pytest.raises(ValueError, match="cross_attention_freq"):
        SalmonnAudioBridge(cfg)


# --- the built-ins: build, save, load back --------------------------------------------------------


def _video(model):
    """(pixel_values_videos, video_grid_thw) of one 4x4-patch, 1-temporal-patch video, fixed."""
    vc = model.config.vision_config
    g = torch.Generator().manual_seed(0)
    dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2
    return torch.randn(16, dim, generator=g), torch.tensor([[1, 4, 4]])


def _outputs(model):
    """What the adapter reads off a model: logits at 3-D positions whose axes differ, audio tokens,
    video tokens (+ DeepStack features for Qwen3-VL)."""
    g = torch.Generator().manual_seed(1)
    d = model.config.get_text_config().hidden_size
    embeds = torch.randn(1, 9, d, generator=g)
    pos = torch.stack([torch.arange(9), torch.arange(9) // 2, torch.arange(9) % 3])[:, None]  # (3, 1, 9)
    mel = torch.randn(1, 128, 3000, generator=g)
    with torch.no_grad():
        out = {"logits": model(inputs_embeds=embeds, position_ids=pos).logits, "audio": model.encode_audio(mel)}
        video = model.get_video_features(*_video(model))
        out["video"] = torch.cat(list(video.pooler_output))
        for i, feat in enumerate(getattr(video, "deepstack_features", None) or []):
            out[f"deepstack{i}"] = torch.cat(list(feat))
    return out


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("name", NAMES)
def test_builtin_builds_saves_and_loads_back_equal(name):
    model, tok = build_tiny_model(name)
    path, gguf = resolve_builtin(name)
    assert gguf is None and (path / "preprocessor_config.json").is_file()
    loaded, ltok = load_vsalmonn(path, _strict_from_pretrained)
    assert type(loaded) is type(model) and not loaded.training
    _assert_same(_outputs(model), _outputs(loaded))
    assert ltok.get_vocab() == tok.get_vocab() and ltok.chat_template == tok.chat_template
    cfg = loaded.config
    assert [ltok.convert_tokens_to_ids(t) for t in ("<|audio_pad|>", "<|video_pad|>", "<|vision_start|>",
                                                    "<|vision_end|>")] == \
        [cfg.audio_token_id, cfg.video_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id]
    assert loaded.audio_bridge.tokens_per_chunk == 60
    assert cfg.audio_config.num_mel_bins == 128 and cfg.audio_config.max_source_positions == 1500
    assert cfg.audio_config.qformer_config.out_hidden_size == cfg.get_text_config().hidden_size == 64
    dec = loaded.text_decoder
    assert len(dec.layers) == 4 and dec.embed_tokens.weight.shape == (len(tok), 64)
    assert hasattr(dec, "norm") and hasattr(dec, "rotary_emb")


def test_tiny_qwen3vl_has_deepstack_into_layers_0_to_2():
    model, _ = build_tiny_model("tiny-omnimem-qwen3vl")
    assert model.model.visual.deepstack_visual_indexes == [0, 1, 2]
    out = _outputs(model)
    assert [k for k in out if k.startswith("deepstack")] == ["deepstack0", "deepstack1", "deepstack2"]
    assert out["deepstack0"].shape == out["video"].shape == (4, 64)  # 4x4 patches, merged 2x2
    tiny25, _ = build_tiny_model("tiny-vsalmonn2plus")
    assert tiny25.config.vision_config.tokens_per_second == 2
    assert not hasattr(tiny25.get_video_features(*_video(tiny25)), "deepstack_features")


def test_saved_key_layouts_are_the_releases(tmp_path):
    for name, want in (("tiny-vsalmonn2plus", {"visual", "model.embed_tokens", "model.layers", "model.norm",
                                               "lm_head", "audio"}),
                       ("tiny-omnimem-qwen3vl", {"model.visual", "model.audio", "model.language_model", "lm_head"})):
        keys = load_file(str(resolve_builtin(name)[0] / "model.safetensors")).keys()
        heads = {k.split(".")[0] if k.split(".")[0] in ("visual", "lm_head", "audio") else ".".join(k.split(".")[:2])
                 for k in keys}
        assert heads == want, name
        prefix = AUDIO_PREFIX[name]
        assert {k[len(prefix):] for k in keys if k.startswith(prefix)} == _release_bridge_keys(2, 2)
    # what we save from a loaded model is that layout again
    model, _ = load_vsalmonn(resolve_builtin("tiny-vsalmonn2plus")[0], _strict_from_pretrained)
    model.save_pretrained(tmp_path)
    again = load_file(str(tmp_path / "model.safetensors"))
    first = load_file(str(resolve_builtin("tiny-vsalmonn2plus")[0] / "model.safetensors"))
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "vsalmonn2plus"


def test_auto_classes_load_a_saved_folder():
    from transformers import AutoConfig, AutoModel

    path = resolve_builtin("tiny-omnimem-qwen3vl")[0]
    assert type(AutoConfig.from_pretrained(path)).__name__ == "OmniMemQwen3VLConfig"
    assert isinstance(AutoModel.from_pretrained(path), OmniMemQwen3VLForConditionalGeneration)


# --- release-form folders ---------------------------------------------------------------------------


def _release_folder(name, dst):
    """A folder as the release writes it, from the built-in's in-memory model: video-SALMONN 2+ with
    model_type qwen2_5_vl, the text settings at the top level and the keys visual.* / model.* /
    lm_head.* / audio.*; OmniMem with model_type qwen3_vl and the keys model.{visual,audio,
    language_model}.* / lm_head.*."""
    model, tok = build_tiny_model(name, seed=5)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    cfg = model.config.to_dict()
    if name == "tiny-vsalmonn2plus":
        state = {("visual." + k[len("model.visual."):] if k.startswith("model.visual.")
                  else "model." + k[len("model.language_model."):] if k.startswith("model.language_model.")
                  else k): v for k, v in state.items()}
        text = cfg.pop("text_config")
        text.pop("model_type")
        cfg = {**text, **cfg, "model_type": "qwen2_5_vl"}
    else:
        cfg["model_type"] = "qwen3_vl"
    cfg.pop("architectures", None)
    dst.mkdir()
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(cfg))
    tok.save_pretrained(dst)
    return model, state


@pytest.mark.parametrize("name", NAMES)
def test_a_release_form_folder_loads_with_equal_outputs(name, tmp_path):
    model, state = _release_folder(name, tmp_path / "release")
    if name == "tiny-vsalmonn2plus":
        assert {k.split(".")[0] for k in state} == {"visual", "model", "lm_head", "audio"}
        assert not any(k.startswith(("model.visual", "model.language_model")) for k in state)
        assert "audio.qformer.bert.embeddings.position_ids" in state
    loaded, _ = load_vsalmonn(tmp_path / "release", _strict_from_pretrained)
    assert type(loaded) is type(model)
    assert loaded.config.get_text_config().hidden_size == 64 and len(loaded.text_decoder.layers) == 4
    _assert_same(_outputs(model.eval()), _outputs(loaded))
    ad = load_adapter(str(tmp_path / "release"), device="cpu")
    _assert_same(_outputs(model), _outputs(ad.model))


def _one_line_error(call, *needles):
    with pytest.raises(ModelError) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


@pytest.mark.parametrize("name", NAMES)
def test_a_folder_missing_a_qformer_tensor_is_refused_naming_it(name, tmp_path):
    key = AUDIO_PREFIX[name] + CROSS_KEY
    path = tmp_path / "m"
    shutil.copytree(resolve_builtin(name)[0], path)
    state = load_file(str(path / "model.safetensors"))
    assert key in state
    del state[key]
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    _one_line_error(lambda: load_vsalmonn(path, _strict_from_pretrained), f"{path}: weights: 1 missing tensor", key)
    _one_line_error(lambda: load_adapter(str(path), device="cpu"), "1 missing tensor", key)


@pytest.mark.parametrize("edit, needles", [
    (lambda s, p: s.update({p + "qformer.cls.predictions.bias": torch.zeros(4)}),
     ["1 unexpected tensor", "qformer.cls.predictions.bias"]),
    (lambda s, p: s.update({p + "q_tokens": torch.zeros(1, 2, 32)}),
     ["1 tensor of the wrong shape", "q_tokens: (1, 2, 32) in the checkpoint, (1, 1, 32) in the model"]),
])
def test_unexpected_or_misshaped_audio_tensors_are_refused(edit, needles, tmp_path):
    path = tmp_path / "m"
    shutil.copytree(resolve_builtin("tiny-vsalmonn2plus")[0], path)
    state = load_file(str(path / "model.safetensors"))
    edit(state, "audio.")
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    _one_line_error(lambda: load_adapter(str(path), device="cpu"), *needles)


def test_config_and_tokenizer_problems_are_one_line_errors(tmp_path):
    path = tmp_path / "m"
    shutil.copytree(resolve_builtin("tiny-vsalmonn2plus")[0], path)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "audio_token_id": cfg["video_token_id"]}))
    _one_line_error(lambda: load_adapter(str(path), device="cpu"), "<|audio_pad|>", "audio_token_id is 6")
    del cfg["audio_config"]["qformer_config"]
    (path / "config.json").write_text(json.dumps(cfg))
    _one_line_error(lambda: load_adapter(str(path), device="cpu"), "missing sub-config 'audio_config.qformer_config'")
    (path / "config.json").write_text(json.dumps({**cfg, "model_type": "qwen2_5_vl", "audio_config": None}))
    _one_line_error(lambda: load_adapter(str(path), device="cpu"), "missing sub-config 'audio_config'")
    plain = {k: v for k, v in cfg.items() if k != "audio_config"}
    (path / "config.json").write_text(json.dumps({**plain, "model_type": "qwen2_5_vl"}))
    _one_line_error(lambda: load_adapter(str(path), device="cpu"), "model_type 'qwen2_5_vl' is not supported")


def test_a_tokenizer_without_audio_pad_gets_it_added_as_the_release_does():
    tok = build_tokenizer(special_tokens=[t for t in VL_SPECIAL_TOKENS if t != "<|audio_pad|>"])
    cfg = tiny_vsalmonn2plus_config(build_tokenizer(special_tokens=VL_SPECIAL_TOKENS))
    ids = {t: tok.convert_tokens_to_ids(t) for t in VL_SPECIAL_TOKENS[:-1]}
    cfg.video_token_id, cfg.image_token_id = ids["<|video_pad|>"], ids["<|image_pad|>"]
    cfg.vision_start_token_id, cfg.vision_end_token_id = ids["<|vision_start|>"], ids["<|vision_end|>"]
    cfg.audio_token_id, cfg.text_config.vocab_size = len(tok), len(tok) + 1
    check_token_ids(cfg, tok, "here")
    assert tok.convert_tokens_to_ids("<|audio_pad|>") == cfg.audio_token_id
    cfg.text_config.vocab_size = len(tok) - 1
    _one_line_error(lambda: check_token_ids(cfg, tok, "here"), "outside the embedding table")


# --- the real-size recipes -------------------------------------------------------------------------


@pytest.mark.parametrize("recipe, cls, hidden, vocab, audio_id", [
    ("vsalmonn2plus-7b.json", VSalmonn2PlusForConditionalGeneration, 3584, 152064, 151665),
    ("omnimem-qwen3vl-8b.json", OmniMemQwen3VLForConditionalGeneration, 4096, 151936, 151669),
])
def test_recipes_build_the_real_shapes(recipe, cls, hidden, vocab, audio_id):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "recipes" / "models" / recipe
    assert "no weights" in json.loads(path.read_text())["_comment"]
    model = model_from_config_file(path, num_layers=1, device="meta")
    assert type(model) is cls and len(model.text_decoder.layers) == 1
    bridge = model.audio_bridge
    assert bridge.q_tokens.shape == (1, 1, 3072) and bridge.audio_proj.weight.shape == (hidden, 3072)
    assert bridge.qformer.bert.encoder.layer[1].crossattention.self.key.weight.shape == (3072, 1280)
    assert bridge.qformer.bert.encoder.layer[1].intermediate_query.dense.weight.shape == (12288, 3072)
    assert len(bridge.layers) == 32 and bridge.layers[0].fc1.weight.shape == (5120, 1280)
    assert model.lm_head.weight.shape == (vocab, hidden) and model.config.audio_token_id == audio_id
    with torch.no_grad():
        assert model.encode_audio(torch.empty(2, 128, 3000, device="meta")).shape == (2, 60, hidden)
    full = model_from_config_file(path, device="meta")
    backbone = sum(p.numel() for n, p in full.named_parameters() if "audio." not in f".{n}")
    if cls is VSalmonn2PlusForConditionalGeneration:
        assert model.config.vision_config.tokens_per_second == 2
        assert round(backbone / 1e9, 2) == 8.29  # Qwen2.5-VL-7B-Instruct's published size
    else:
        assert model.model.visual.deepstack_visual_indexes == [8, 16, 24]
        assert len(model.model.visual.deepstack_merger_list) == 3
        assert round(backbone / 1e9, 2) == 8.77  # Qwen3-VL-8B-Instruct's published size
    assert len(full.text_decoder.layers) == (28 if cls is VSalmonn2PlusForConditionalGeneration else 36)


# --- revisions of the built-ins ------------------------------------------------------------------

FINGERPRINTS = {("tiny-vsalmonn2plus", 1): "0c10d562758a6d52", ("tiny-omnimem-qwen3vl", 1): "efe3dc5121b20252"}


def _fingerprint(name: str) -> str:
    model, tok = build_tiny_model(name, seed=0)
    config = model.config.to_dict()
    config.pop("transformers_version", None)
    blob = json.dumps([config, tok.backend_tokenizer.to_str(), tok.chat_template], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", NAMES)
def test_a_changed_builtin_needs_a_new_revision(name):
    from omnimem_train.models.builtin import REVISIONS

    key = (name, REVISIONS.get(name, 1))
    assert FINGERPRINTS.get(key) == _fingerprint(name), (
        f"builtin:{name} changed: raise its revision in REVISIONS and record {_fingerprint(name)} here"
    )
