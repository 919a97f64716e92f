"""Built-in random-weight models: `testbed-omni` is a wider tiny Omni whose audio convs are drawn
at a large std (its frozen random audio tower then separates the testbed's tones), deterministic in
the seed, and saved under a revision-specific folder; `testbed-vsalmonn2plus` is the video-SALMONN 2+
family's testbed model: the same LLM on Qwen2.5-VL, a Whisper + Q-Former bridge that separates the
tones after its random init."""

import hashlib
import json

import numpy as np
import pytest
import torch

from omnimem_train.memory.policies.full import FullMemory
from omnimem_train.models.base import MediaInput, Modality
from omnimem_train.models.builtin import BUILTINS, TESTBED_AUDIO_CONV_STD, TESTBED_TEXT, build_tiny_model
from omnimem_train.models.qwen2_5_omni import Qwen2_5OmniAdapter
from omnimem_train.streaming.engine import StreamingEngine


def _convs(model):
    tower = model.model.audio_tower
    return tower.conv1, tower.conv2


def test_testbed_omni_is_wider_with_large_audio_convs():
    assert "testbed-omni" in BUILTINS and TESTBED_AUDIO_CONV_STD == 1.0
    model, tok = build_tiny_model("testbed-omni", seed=0)
    text = model.config.get_text_config()
    assert text.hidden_size == 128
    assert model.model.language_model.embed_tokens.weight.shape == (len(tok), 128)
    for conv in _convs(model):
        assert abs(conv.weight.std().item() - 1.0) < 0.05
        assert abs(conv.weight.mean().item()) < 0.05
        assert conv.bias.abs().sum() == 0
    tiny, _ = build_tiny_model("tiny-omni", seed=0)
    assert tiny.config.get_text_config().hidden_size == 64
    assert all(conv.weight.std().item() < 0.05 for conv in _convs(tiny))  # the default init stays small


def test_testbed_omni_is_deterministic_in_seed():
    a, _ = build_tiny_model("testbed-omni", seed=3)
    b, _ = build_tiny_model("testbed-omni", seed=3)
    c, _ = build_tiny_model("testbed-omni", seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.audio_tower.conv1.weight"], sc["model.audio_tower.conv1.weight"])
    assert not torch.equal(sa["model.language_model.embed_tokens.weight"], sc["model.language_model.embed_tokens.weight"])


def test_testbed_omni_streams_audio_and_video_into_its_wider_llm():
    """The towers project into the 128-wide LLM and TMRoPE's sections fit its heads: a stream runs."""
    model, tok = build_tiny_model("testbed-omni", seed=0, num_layers=1)
    ad = Qwen2_5OmniAdapter(model, tok)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 56, 56, 3), dtype=np.uint8)
    mel = rng.standard_normal((128, 200)).astype(np.float32)
    media = MediaInput(frames=iter(frames), fps=2.0, mel_windows=iter([mel]), duration_s=2.0)
    with torch.no_grad():
        pieces = list(ad.stream(media, [1, 2, 3]))
        assert all(p.embeds.shape[1] == 128 for p in pieces)
        kinds = {int(m) for p in pieces for m in p.modality}
        assert {int(Modality.AUDIO), int(Modality.VISUAL), int(Modality.TEXT)} <= kinds
        state, _ = StreamingEngine(ad, FullMemory(), group_size=32).prefill(iter(pieces))
        logits = StreamingEngine(ad, FullMemory()).forward(state, ad.text_piece([5], state.next_pos),
                                                            want_logits="last")
    assert logits.shape[-1] == len(tok) and torch.isfinite(logits).all()


def _tone_separation(model, ad=None, per_second: int = 25, per_token: bool = False):
    """(tone centroids' spread / a tone's spread, leave-one-out nearest-centroid accuracy) of the
    tower's mean output over 1-s testbed tones (5 frequencies x 6 placements in 4-s clips), or with
    `per_token` of each of its output tokens in the tone's second (`per_second` audio tokens/s)."""
    from data_prep.testbed import TestbedSpec, _wave
    from omnimem_train.media.features import LogMelExtractor
    from omnimem_train.models.builtin import build_tokenizer

    spec, mel = TestbedSpec(seconds=4.0), LogMelExtractor()
    ad = ad or Qwen2_5OmniAdapter(model, build_tokenizer())
    feats, labels = [], []
    for k, freq in enumerate(spec.tones):
        for start in range(6):
            at = start % 4
            plan = {"seed": 100 * k + start, "events": [{"kind": "audio", "start": at, "end": at + 1, "freq": freq}]}
            with torch.no_grad():
                out = ad.encode_audio_windows(list(mel.iter_windows(_wave(spec, plan))))
            tone = out[per_second * at : per_second * (at + 1)]
            rows = list(tone) if per_token else [tone.mean(0)]
            feats += rows
            labels += [k] * len(rows)
    x, y = torch.stack(feats), torch.tensor(labels)
    cent = torch.stack([x[y == k].mean(0) for k in range(len(spec.tones))])
    within = torch.stack([(x[y == k] - cent[k]).norm(dim=-1).mean() for k in range(len(spec.tones))]).mean()
    ratio = ((cent - cent.mean(0)).norm(dim=-1).mean() / within).item()
    hits = 0
    for i in range(len(y)):  # leave-one-out
        keep = torch.arange(len(y)) != i
        c = torch.stack([x[keep & (y == k)].mean(0) for k in range(len(spec.tones))])
        hits += int((c - x[i]).norm(dim=-1).argmin() == y[i])
    return ratio, hits / len(y)


def test_frozen_testbed_audio_tower_separates_the_testbed_tones():
    model, _ = build_tiny_model("testbed-omni", seed=0, num_layers=1)
    ratio, accuracy = _tone_separation(model)
    assert ratio > 3 and accuracy == 1.0, (ratio, accuracy)
    small, _ = build_tiny_model("testbed-omni", seed=0, num_layers=1)
    for conv in _convs(small):  # revision 1's std: the tower's positions drown the tones
        torch.nn.init.normal_(conv.weight, std=0.1)
    assert _tone_separation(small)[0] < 1


def test_testbed_vsalmonn2plus_builds_with_the_documented_shapes():
    """testbed-omni's LLM (hidden 128, intermediate 256, 4 heads, 2 KV heads, 4 layers, mrope_section
    [8, 4, 4]) on the Qwen2.5-VL backbone; both towers project to 128; Whisper convs at the testbed std;
    a 4-s 280x280 clip at 2 fps is 400 visual + 8 audio tokens; a stream runs through its LLM."""
    from omnimem_train.models.builtin import VSALMONN_BUILTINS
    from omnimem_train.models.vsalmonn import VSalmonn2PlusForConditionalGeneration
    from omnimem_train.models.vsalmonn_stream import VSalmonnAdapter

    assert "testbed-vsalmonn2plus" in BUILTINS and "testbed-vsalmonn2plus" in VSALMONN_BUILTINS
    model, tok = build_tiny_model("testbed-vsalmonn2plus", seed=0)
    assert isinstance(model, VSalmonn2PlusForConditionalGeneration) and model.config.model_type == "vsalmonn2plus"
    text = model.config.get_text_config()
    assert (text.hidden_size, text.intermediate_size, text.num_attention_heads, text.num_key_value_heads,
            text.num_hidden_layers) == (128, 256, 4, 2, 4)
    assert text.rope_parameters["mrope_section"] == [8, 4, 4] == TESTBED_TEXT["mrope_section"]
    assert sum(text.rope_parameters["mrope_section"]) == text.hidden_size // text.num_attention_heads // 2
    assert model.model.language_model.embed_tokens.weight.shape == (len(tok), 128)
    assert model.lm_head.weight.shape == (len(tok), 128)
    vision, audio = model.config.vision_config, model.config.audio_config
    assert (vision.out_hidden_size, vision.tokens_per_second, vision.patch_size, vision.spatial_merge_size) == (128, 2, 14, 2)
    assert audio.qformer_config.out_hidden_size == 128 and model.audio.audio_proj.out_features == 128
    for conv in (model.audio.conv1, model.audio.conv2):
        assert abs(conv.weight.std().item() - TESTBED_AUDIO_CONV_STD) < 0.05 and conv.bias.abs().sum() == 0
    tiny, _ = build_tiny_model("tiny-vsalmonn2plus", seed=0, num_layers=1)
    assert tiny.config.get_text_config().hidden_size == 64 and tiny.audio.conv1.weight.std().item() < 0.05

    ad = VSalmonnAdapter(model, tok)
    assert ad.frame_multiple == 28 and ad.visual_tokens(8, 280, 280) == 400 and ad.audio_tokens(400) == 8
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 56, 84, 3), dtype=np.uint8)
    mel = rng.standard_normal((128, 200)).astype(np.float32)
    media = MediaInput(frames=iter(frames), fps=2.0, mel_windows=iter([mel]), duration_s=2.0)
    with torch.no_grad():
        pieces = list(ad.stream(media, tok("Which tone", add_special_tokens=False)["input_ids"]))
        assert all(p.embeds.shape[1] == 128 for p in pieces)
        kinds = [int(m) for p in pieces for m in p.modality]
        assert kinds.count(int(Modality.VISUAL)) == 2 * 2 * 3 and kinds.count(int(Modality.AUDIO)) == 4
        state, _ = StreamingEngine(ad, FullMemory(), group_size=32).prefill(iter(pieces))
        logits = StreamingEngine(ad, FullMemory()).forward(state, ad.text_piece([5], state.next_pos),
                                                            want_logits="last")
    assert logits.shape[-1] == len(tok) and torch.isfinite(logits).all()


def test_testbed_vsalmonn2plus_is_deterministic_in_seed():
    a, _ = build_tiny_model("testbed-vsalmonn2plus", seed=3, num_layers=1)
    b, _ = build_tiny_model("testbed-vsalmonn2plus", seed=3, num_layers=1)
    c, _ = build_tiny_model("testbed-vsalmonn2plus", seed=4, num_layers=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["audio.conv1.weight"], sc["audio.conv1.weight"])


def test_frozen_testbed_vsalmonn2plus_bridge_separates_the_testbed_tones():
    """Per output token of the frozen random Whisper + Q-Former bridge (2 tokens per 1-s tone), the
    5 tone centroids spread 6.6x a tone's own spread with the convs at the testbed std; at Whisper's
    default 0.02 only 1.3x, and nearest-centroid no longer finds every tone."""
    from omnimem_train.models.vsalmonn_stream import VSalmonnAdapter

    model, tok = build_tiny_model("testbed-vsalmonn2plus", seed=0, num_layers=1)
    ratio, accuracy = _tone_separation(model, VSalmonnAdapter(model, tok), per_second=2, per_token=True)
    assert ratio > 3 and accuracy == 1.0, (ratio, accuracy)
    for conv in (model.audio.conv1, model.audio.conv2):  # the default Whisper init
        torch.nn.init.normal_(conv.weight, std=0.02)
        torch.nn.init.zeros_(conv.bias)
    small_ratio, small_accuracy = _tone_separation(model, VSalmonnAdapter(model, tok), per_second=2, per_token=True)
    assert small_ratio < 2 and small_accuracy < 1.0, (small_ratio, small_accuracy)


def test_a_changed_builtin_is_saved_under_its_revision(tmp_path, monkeypatch):
    from omnimem_train.models.builtin import REVISIONS, resolve_builtin

    monkeypatch.setenv("OMNIMEM_HOME", str(tmp_path))
    stale = tmp_path / "builtin" / "testbed-omni"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")  # a copy saved before the revision
    path, gguf = resolve_builtin("testbed-omni")
    assert REVISIONS["testbed-omni"] >= 2 and gguf is None
    assert path == tmp_path / "builtin" / f"testbed-omni.r{REVISIONS['testbed-omni']}"
    assert (path / "model.safetensors").is_file()
    assert resolve_builtin("tiny-llama")[0] == tmp_path / "builtin" / f"tiny-llama.r{REVISIONS['tiny-llama']}"


def _saved_tokenizer(name, tmp_path, monkeypatch):
    """The tokenizer `builtin:<name>` is trained and evaluated with: saved, then loaded as the loader does."""
    from transformers import AutoTokenizer

    from omnimem_train.models.builtin import resolve_builtin

    monkeypatch.setenv("OMNIMEM_HOME", str(tmp_path))
    return AutoTokenizer.from_pretrained(str(resolve_builtin(name)[0]), local_files_only=True)


@pytest.mark.parametrize("name", ["tiny-omni", "testbed-omni", "tiny-llama", "testbed-vsalmonn2plus"])
def test_a_saved_builtin_tokenizer_loads_back_as_built(name, tmp_path, monkeypatch):
    """Qwen2Tokenizer, once saved, loads back with Qwen2's own pre-tokenizer (one token per digit),
    so the built-ins' tokenizers were not the ones they were built as: "1000" became 4 tokens."""
    _, built = build_tiny_model(name, seed=0, num_layers=1)
    loaded = _saved_tokenizer(name, tmp_path, monkeypatch)
    text = "Which tone did the video play 2000 Hz tone\nwas 1000, red! 12345 <|AUDIO|><|im_end|>  x"
    assert loaded(text)["input_ids"] == built(text)["input_ids"]
    assert len(loaded) == len(built) and loaded.get_vocab() == built.get_vocab()
    assert loaded.chat_template == built.chat_template and loaded.eos_token_id == built.eos_token_id


@pytest.mark.parametrize("name, small_name", [("testbed-omni", "tiny-omni"),
                                              ("testbed-vsalmonn2plus", "tiny-vsalmonn2plus")])
def test_testbed_tokenizer_has_one_token_per_testbed_word(name, small_name, tmp_path, monkeypatch):
    """The words an answer hangs on -- every colour and tone of the testbed generator, "first" /
    "last", "show" / "play" -- are single tokens of each testbed built-in's tokenizer as saved and
    loaded for training, both inside a question (after a space) and starting an answer; the tiny
    built-in of the family keeps its small vocabulary."""
    from data_prep.testbed import COLOURS, TestbedSpec

    tok = _saved_tokenizer(name, tmp_path, monkeypatch)
    _, small = build_tiny_model(small_name, seed=0, num_layers=1)
    enc = lambda t, s: t(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    words = [*COLOURS, *(f"{hz:g}" for hz in TestbedSpec().tones)]
    for word in words:
        assert len(enc(tok, word)) == 1 and len(enc(tok, " " + word)) == 1, word
    for word in ("first", "last", "show", "play"):
        assert len(enc(tok, " " + word)) == 1, word
    assert len(enc(small, " last")) > 1 and len(small) < len(tok)


# What each built-in's revision is: its config and tokenizer. A built-in that changes without a new
# revision would leave every machine that saved the old one training on the old one.
FINGERPRINTS = {
    ("tiny-omni", 2): "df06b7b03be0f05e",
    ("testbed-omni", 5): "01098f2ea80f15d3",
    ("tiny-llama", 2): "e8cadef66ef407ce",
    ("testbed-vsalmonn2plus", 1): "08899c0602fc6e21",
}


def _fingerprint(name: str) -> str:
    model, tok = build_tiny_model(name, seed=0)
    config = model.config.to_dict()
    config.pop("transformers_version", None)
    blob = json.dumps([config, tok.backend_tokenizer.to_str(), tok.chat_template, TESTBED_AUDIO_CONV_STD],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", ["tiny-omni", "testbed-omni", "tiny-llama", "testbed-vsalmonn2plus"])
def test_a_changed_builtin_needs_a_new_revision(name):
    from omnimem_train.models.builtin import REVISIONS

    key = (name, REVISIONS.get(name, 1))
    assert FINGERPRINTS.get(key) == _fingerprint(name), (
        f"builtin:{name} changed: raise its revision in REVISIONS and record {_fingerprint(name)} here"
    )
