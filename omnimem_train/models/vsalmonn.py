"""The video-SALMONN 2+ model family: a Qwen2.5-VL or Qwen3-VL backbone with a Whisper + window
Q-Former audio bridge, built on the transformers classes, with the releases' weight names.

The audio bridge (`SalmonnAudioBridge`, a `WhisperEncoder` subclass) turns each 30-s log-mel window
(n_mels, 3000) into Whisper states (1500, d) (final `layer_norm` included), cuts them into windows of
`second_per_window` s (25 frames at 0.5 s, stride `second_stride`), runs a LAVIS-style Q-Former on
each window (Q learned query tokens, LayerNorm on the queries, then per layer: bidirectional
self-attention, cross-attention to the window's frames, feed-forward; post-LN everywhere) and
projects the queries to the LLM width: 60·Q tokens per 30-s window.

Two models, one per backbone, each with its own config class (`audio_config` + `audio_token_id`
added to the backbone's config):

- `VSalmonn2PlusForConditionalGeneration` (video-SALMONN 2+, Qwen2.5-VL): the bridge at `audio`.
  Saved keys: `visual.*`, `model.*` (text decoder), `lm_head.*`, `audio.*`, as the release. The
  transformers load/save renames of Qwen2.5-VL (`visual` <-> `model.visual`, `model` <->
  `model.language_model`) are registered for this class; `audio.*` is outside them.
- `OmniMemQwen3VLForConditionalGeneration` (the OmniMem release, Qwen3-VL with DeepStack): the
  bridge at `model.audio`. Saved keys: `model.visual.*`, `model.audio.*`, `model.language_model.*`,
  `lm_head.*` (no renames).

Config files: the classes save `model_type` `vsalmonn2plus` / `omnimem_qwen3vl` (registered with
AutoConfig / AutoModel here). A release folder's config.json says `qwen2_5_vl` / `qwen3_vl` and
holds an `audio_config`; `load_vsalmonn` and `model_from_config_file` accept both (`model_class_for`).

The forward is the backbone's (text and vision, positions by transformers' rule); audio tokens enter
through `encode_audio`, and the stream layout and positions of audio-visual input are the adapter's
(`models/vsalmonn_stream.py`).
"""

import json
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    BertConfig,
    PreTrainedConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLModel,
    WhisperConfig,
)
from transformers import initialization as init
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.models.bert.modeling_bert import BertAttention, BertIntermediate, BertLayer, BertOutput
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel, Qwen2_5_VLPreTrainedModel
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLPreTrainedModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from omnimem_train.errors import ModelError, first_line

WINDOW_SECONDS = 30.0  # one Whisper window: 3000 log-mel frames -> max_source_positions (1500) states
AUDIO_PAD = "<|audio_pad|>"
# config field -> the token the tokenizer must map to it
TOKEN_FIELDS = {
    "audio_token_id": AUDIO_PAD,
    "video_token_id": "<|video_pad|>",
    "image_token_id": "<|image_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}
# The real tokenizers' <|audio_pad|>: added after the last added token of Qwen2.5 (151664) / Qwen3 (151668).
RELEASE_AUDIO_TOKEN_ID = {"vsalmonn2plus": 151665, "omnimem_qwen3vl": 151669}


# --- configs ---------------------------------------------------------------------------------


class QFormerConfig(BertConfig):
    """The window Q-Former (the release's `qformer_config`, a BERT config with its defaults):
    hidden_size 3072, 2 layers, 12 heads, intermediate 12288, cross-attention in every layer
    (`cross_attention_freq` 1) from `encoder_width` (the Whisper width, 1280), `query_length`
    learned queries per window, projected to `out_hidden_size` (set to the LLM width by the model
    config). Dropouts act in training only."""

    hidden_size: int = 3072
    num_hidden_layers: int = 2
    num_attention_heads: int = 12
    intermediate_size: int = 12288
    add_cross_attention: bool = True
    encoder_width: int = 1280
    cross_attention_freq: int = 1
    query_length: int = 1
    out_hidden_size: int = 3584


class SalmonnAudioConfig(WhisperConfig):
    """The release's `audio_config`: a Whisper config whose defaults are whisper-large-v3's encoder
    (128 mel bins, 32 layers, 20 heads, d_model 1280, 1500 positions = 30 s), plus the window
    (`second_per_window`, `second_stride`, seconds) and the `qformer_config`."""

    sub_configs_defaults = {"qformer_config": QFormerConfig}

    num_mel_bins: int = 128
    encoder_layers: int = 32
    encoder_attention_heads: int = 20
    encoder_ffn_dim: int = 5120
    d_model: int = 1280
    second_per_window: float = 0.5
    second_stride: float = 0.5
    qformer_config: dict | PreTrainedConfig | None = None


class VSalmonn2PlusConfig(Qwen2_5_VLConfig):
    """Qwen2.5-VL's config plus `audio_config` and `audio_token_id` (151665 in the release)."""

    model_type = "vsalmonn2plus"
    sub_configs_defaults = {**Qwen2_5_VLConfig.sub_configs_defaults, "audio_config": SalmonnAudioConfig}

    audio_config: dict | PreTrainedConfig | None = None
    audio_token_id: int = RELEASE_AUDIO_TOKEN_ID["vsalmonn2plus"]

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.audio_config.qformer_config.out_hidden_size = self.text_config.hidden_size


class OmniMemQwen3VLConfig(Qwen3VLConfig):
    """Qwen3-VL's config plus `audio_config` and `audio_token_id` (151669 in the release)."""

    model_type = "omnimem_qwen3vl"
    sub_configs_defaults = {**Qwen3VLConfig.sub_configs_defaults, "audio_config": SalmonnAudioConfig}

    audio_config: dict | PreTrainedConfig | None = None
    audio_token_id: int = RELEASE_AUDIO_TOKEN_ID["omnimem_qwen3vl"]

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.audio_config.qformer_config.out_hidden_size = self.text_config.hidden_size


# --- the audio bridge ------------------------------------------------------------------------


class QFormerEmbeddings(nn.Module):
    """LayerNorm (and dropout) on the query tokens: the LAVIS embeddings without word or position
    embeddings. `position_ids` (1, max_position_embeddings) is unused; it is kept because the
    release saves it (a persistent buffer there), so its checkpoints load strictly."""

    def __init__(self, config: QFormerConfig):
        super().__init__()
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings)[None], persistent=True)

    def forward(self, query_embeds: torch.Tensor) -> torch.Tensor:
        """(B, Q, H) -> (B, Q, H)."""
        return self.dropout(self.LayerNorm(query_embeds))


class QFormerLayer(BertLayer):
    """One Q-Former layer, run by `BertLayer.forward`: bidirectional self-attention over the queries,
    cross-attention to the window (key/value `Linear(encoder_width -> hidden)`), then the
    feed-forward under the release's names `intermediate_query` / `output_query`.

    `BertLayer.__init__` is not called: it builds the feed-forward as `intermediate` / `output`,
    makes the self-attention causal and refuses cross-attention unless the config is a decoder."""

    def __init__(self, config: QFormerConfig, layer_idx: int):
        nn.Module.__init__(self)
        self.chunk_size_feed_forward = config.chunk_size_feed_forward
        self.seq_len_dim = 1
        self.is_decoder = True  # BertLayer.forward runs the cross-attention only for a decoder layer
        self.add_cross_attention = True
        self.attention = BertAttention(config, is_causal=False, layer_idx=layer_idx)
        self.crossattention = BertAttention(config, is_causal=False, layer_idx=layer_idx, is_cross_attention=True)
        self.crossattention.self.key = nn.Linear(config.encoder_width, self.crossattention.self.all_head_size)
        self.crossattention.self.value = nn.Linear(config.encoder_width, self.crossattention.self.all_head_size)
        self.intermediate_query = BertIntermediate(config)
        self.output_query = BertOutput(config)

    def feed_forward_chunk(self, attention_output: torch.Tensor) -> torch.Tensor:
        return self.output_query(self.intermediate_query(attention_output), attention_output)


class QFormerEncoder(nn.Module):
    def __init__(self, config: QFormerConfig):
        super().__init__()
        self.layer = nn.ModuleList([QFormerLayer(config, i) for i in range(config.num_hidden_layers)])

    def forward(self, hidden: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, Q, H) queries, (B, W, encoder_width) window -> (B, Q, H). No masks: every query sees
        every query and every frame of its window."""
        for layer in self.layer:
            hidden = layer(hidden, None, encoder_hidden_states)
        return hidden


class QFormerModel(nn.Module):
    def __init__(self, config: QFormerConfig):
        super().__init__()
        self.embeddings = QFormerEmbeddings(config)
        self.encoder = QFormerEncoder(config)

    def forward(self, query_embeds: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, Q, H) query tokens, (B, W, encoder_width) window frames -> (B, Q, H)."""
        return self.encoder(self.embeddings(query_embeds), encoder_hidden_states)


class QFormer(nn.Module):
    """The release's Q-Former container (`qformer.bert.*`; its language-model head is never built)."""

    def __init__(self, config: QFormerConfig):
        super().__init__()
        self.bert = QFormerModel(config)


class SalmonnAudioBridge(WhisperEncoder):
    """Whisper encoder (`conv1`, `conv2`, `embed_positions`, `layers`, `layer_norm`) + window
    Q-Former (`qformer`) + learned queries `q_tokens` (1, Q, H) + `audio_proj` Linear(H -> LLM
    hidden): the release's `audio` module, with its keys."""

    config_class = SalmonnAudioConfig

    def __init__(self, config: SalmonnAudioConfig):
        super().__init__(config)
        q = config.qformer_config
        if q.cross_attention_freq != 1 or not q.add_cross_attention:
            raise ValueError(f"audio_config.qformer_config: cross-attention in every layer is supported "
                             f"(cross_attention_freq 1), got cross_attention_freq={q.cross_attention_freq}, "
                             f"add_cross_attention={q.add_cross_attention}")
        if q.encoder_width != config.d_model:
            raise ValueError(f"audio_config.qformer_config.encoder_width ({q.encoder_width}) must be the Whisper "
                             f"width audio_config.d_model ({config.d_model})")
        frames = config.max_source_positions / WINDOW_SECONDS  # Whisper states per second (50)
        self.window_frames = round(frames * config.second_per_window)
        self.stride_frames = round(frames * config.second_stride)
        if not 0 < self.window_frames <= config.max_source_positions or self.stride_frames <= 0:
            raise ValueError(f"audio_config: second_per_window={config.second_per_window}, second_stride="
                             f"{config.second_stride} give no window of a {WINDOW_SECONDS:g}-s Whisper window")
        # The Q-Former's attention modules read the implementation from their own (nested) config.
        q._attn_implementation = self.config._attn_implementation
        self.qformer = QFormer(q)
        self.q_tokens = nn.Parameter(torch.zeros(1, q.query_length, q.hidden_size))
        self.audio_proj = nn.Linear(q.hidden_size, q.out_hidden_size)
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            init.normal_(self.q_tokens, mean=0.0, std=self.config.qformer_config.initializer_range)
        elif isinstance(module, QFormerEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1])[None])

    @property
    def windows_per_chunk(self) -> int:
        """Q-Former windows per 30-s Whisper window (60 at 0.5 s / 0.5 s)."""
        return (self.config.max_source_positions - self.window_frames) // self.stride_frames + 1

    @property
    def tokens_per_chunk(self) -> int:
        """Audio tokens per 30-s Whisper window: windows_per_chunk · Q (60 in the release)."""
        return self.windows_per_chunk * self.config.qformer_config.query_length

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """(N, n_mels, 3000) log-mel windows, each 30 s (padded) -> (N, L·Q, D) audio tokens: token
        l·Q + q is query q of window l (frames [l·stride, l·stride + window) of the (N, 1500, d)
        Whisper states, `layer_norm` applied). L = 60 and Q = 1 in the release; D = LLM hidden."""
        hidden = super().forward(mel.to(self.conv1.weight.dtype)).last_hidden_state  # (N, 1500, d)
        n, _, dim = hidden.shape
        windows = hidden.unfold(1, self.window_frames, self.stride_frames)  # (N, L, d, window)
        n_windows = windows.shape[1]
        windows = windows.permute(0, 1, 3, 2).reshape(n * n_windows, self.window_frames, dim)
        queries = self.q_tokens.expand(windows.shape[0], -1, -1)
        out = self.audio_proj(self.qformer.bert(queries, windows))  # (N·L, Q, D)
        return out.reshape(n, n_windows * out.shape[1], out.shape[2])


# --- the models ------------------------------------------------------------------------------


class _AudioBridgeMixin:
    """What the stream adapter uses beyond the backbone: `audio_bridge`, `encode_audio`, `text_decoder`."""

    @property
    def audio_bridge(self) -> SalmonnAudioBridge:
        raise NotImplementedError

    @property
    def text_decoder(self) -> nn.Module:
        """The text decoder: `embed_tokens`, `layers`, `norm`, `rotary_emb` (M-RoPE)."""
        return self.model.language_model

    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """(N, n_mels, 3000) log-mel windows -> (N, 60·Q, D) audio tokens (`SalmonnAudioBridge.encode`)."""
        return self.audio_bridge.encode(mel)


class VSalmonn2PlusForConditionalGeneration(_AudioBridgeMixin, Qwen2_5_VLForConditionalGeneration):
    """video-SALMONN 2+: Qwen2.5-VL (`model.visual`, `model.language_model`, `lm_head`) + `audio`.
    `get_video_features(pixel_values_videos, video_grid_thw)` is Qwen2.5-VL's."""

    config_class = VSalmonn2PlusConfig

    def __init__(self, config: VSalmonn2PlusConfig):
        Qwen2_5_VLPreTrainedModel.__init__(self, config)
        self.model = Qwen2_5_VLModel(config)
        self.audio = SalmonnAudioBridge._from_config(config.audio_config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    @property
    def audio_bridge(self) -> SalmonnAudioBridge:
        return self.audio


class OmniMemQwen3VLModel(Qwen3VLModel):
    """Qwen3VLModel (`visual` with DeepStack mergers, `language_model`) + `audio`."""

    config_class = OmniMemQwen3VLConfig

    def __init__(self, config: OmniMemQwen3VLConfig):
        Qwen3VLPreTrainedModel.__init__(self, config)
        self.visual = AutoModel.from_config(config.vision_config)
        self.audio = SalmonnAudioBridge._from_config(config.audio_config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.rope_deltas = None
        self.post_init()


class OmniMemQwen3VLForConditionalGeneration(_AudioBridgeMixin, Qwen3VLForConditionalGeneration):
    """The OmniMem release: Qwen3-VL + `model.audio`. `get_video_features(pixel_values_videos,
    video_grid_thw)` is Qwen3-VL's: `pooler_output` (per video: (T·h·w, D) merged tokens) and
    `deepstack_features` (one per `deepstack_visual_indexes` entry, same shapes), which the
    decoder adds to the visual tokens' hidden states after layers 0, 1, 2."""

    config_class = OmniMemQwen3VLConfig

    def __init__(self, config: OmniMemQwen3VLConfig):
        Qwen3VLPreTrainedModel.__init__(self, config)
        self.model = OmniMemQwen3VLModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    @property
    def audio_bridge(self) -> SalmonnAudioBridge:
        return self.model.audio


MODEL_CLASSES = {
    VSalmonn2PlusConfig.model_type: VSalmonn2PlusForConditionalGeneration,
    OmniMemQwen3VLConfig.model_type: OmniMemQwen3VLForConditionalGeneration,
}
# A release's config.json: the backbone's model_type with an `audio_config`.
RELEASE_TYPES = {"qwen2_5_vl": VSalmonn2PlusConfig.model_type, "qwen3_vl": OmniMemQwen3VLConfig.model_type}

for _cfg_cls, _model_cls in ((VSalmonn2PlusConfig, VSalmonn2PlusForConditionalGeneration),
                             (OmniMemQwen3VLConfig, OmniMemQwen3VLForConditionalGeneration)):
    AutoConfig.register(_cfg_cls.model_type, _cfg_cls, exist_ok=True)
    AutoModel.register(_cfg_cls, _model_cls, exist_ok=True)
    AutoModelForImageTextToText.register(_cfg_cls, _model_cls, exist_ok=True)
# Qwen2.5-VL's own checkpoint renames (^visual -> model.visual, ^model -> model.language_model on
# load, reversed on save), so this class reads and writes the release's layout.
register_checkpoint_conversion_mapping(
    VSalmonn2PlusForConditionalGeneration.__name__,
    get_checkpoint_conversion_mapping(Qwen2_5_VLForConditionalGeneration.__name__), overwrite=True)


# --- configs from files, loading -------------------------------------------------------------


def family_type(cfg: dict) -> str | None:
    """`vsalmonn2plus` / `omnimem_qwen3vl` for a config.json dict of this family (ours, or a
    release's: `qwen2_5_vl` / `qwen3_vl` with an `audio_config`); None otherwise."""
    model_type = cfg.get("model_type")
    if model_type in MODEL_CLASSES:
        return model_type
    if model_type in RELEASE_TYPES and "audio_config" in cfg:
        return RELEASE_TYPES[model_type]
    return None


def check_config(cfg: dict, where) -> None:
    """ModelError (one line naming `where`) unless config.json dict `cfg` is of this family and has
    the sub-configs and the size keys the weights' shapes depend on (read before any weight)."""
    kind = family_type(cfg)
    if kind is None:
        raise ModelError(f"{where}: model_type {cfg.get('model_type')!r} is not a video-SALMONN 2+ family config "
                         f"(expected {', '.join(MODEL_CLASSES)}, or {', '.join(RELEASE_TYPES)} with an 'audio_config')")
    for sub in ("vision_config", "audio_config"):
        if not isinstance(cfg.get(sub), dict):
            raise ModelError(f"{where}: missing sub-config '{sub}'")
    # Qwen2.5-VL configs may hold the text settings at the top level (the release's form).
    flat_ok = kind == VSalmonn2PlusConfig.model_type and "text_config" not in cfg
    text, text_at = (cfg, "the top level") if flat_ok else (cfg.get("text_config"), "'text_config'")
    if not isinstance(text, dict):
        raise ModelError(f"{where}: missing sub-config 'text_config'")
    audio = cfg["audio_config"]
    qformer = audio.get("qformer_config")
    if not isinstance(qformer, dict):
        raise ModelError(f"{where}: missing sub-config 'audio_config.qformer_config'")
    for keys, node, at in ((("hidden_size", "num_hidden_layers"), text, text_at),
                           (("d_model", "encoder_layers"), audio, "'audio_config'"),
                           (("hidden_size", "num_hidden_layers", "query_length"), qformer,
                            "'audio_config.qformer_config'")):
        missing = [k for k in keys if k not in node]
        if missing:
            raise ModelError(f"{where}: missing {', '.join(repr(k) for k in missing)} in {at}")


def config_from_dict(cfg: dict, where="config") -> Qwen2_5_VLConfig | Qwen3VLConfig:
    """The family's config object for a config.json dict (ours or a release's); keys starting
    with '_' (comments) are dropped."""
    check_config(cfg, where)
    cls = MODEL_CLASSES[family_type(cfg)].config_class
    return cls.from_dict({k: v for k, v in cfg.items() if k != "model_type" and not k.startswith("_")})


def model_class_for(cfg: dict, where="config"):
    """The model class for a config.json dict of this family."""
    check_config(cfg, where)
    return MODEL_CLASSES[family_type(cfg)]


def _read_json(path: Path) -> dict:
    try:
        cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: unreadable config ({first_line(e)})") from e
    if not isinstance(cfg, dict):
        raise ModelError(f"{path}: not a JSON object")
    return cfg


def model_from_config_file(path, num_layers: int | None = None, device=None):
    """A random-weight model (eval mode) from a config.json-shaped file (`recipes/models/*.json`,
    ours or a release's form). `num_layers` keeps only that many text-decoder layers (the vision
    tower and Whisper keep theirs), for benchmarks; `device` (e.g. "meta") is where the weights are
    made: "meta" checks the shapes without allocating."""
    path = Path(path)
    cfg = _read_json(path)
    if num_layers is not None:
        text = cfg["text_config"] if isinstance(cfg.get("text_config"), dict) else cfg
        text["num_hidden_layers"] = num_layers
        if isinstance(text.get("layer_types"), list):
            text["layer_types"] = text["layer_types"][:num_layers]
        if "max_window_layers" in text:
            text["max_window_layers"] = min(int(text["max_window_layers"]), num_layers)
    cls = model_class_for(cfg, path)
    config = config_from_dict(cfg, path)
    with torch.device(device) if device is not None else nullcontext():
        model = cls(config)
    return model.eval()


def load_vsalmonn(path, strict_from_pretrained, **from_pretrained_kw):
    """(model in eval mode, tokenizer) from a checkpoint folder of this family (our layout or a
    release's), offline. `strict_from_pretrained(from_pretrained, source, **kw)` loads the weights and
    raises ModelError on any missing, unexpected or mis-shaped tensor (`models/load.py` passes its
    `_strict_from_pretrained`). Defaults: float32, sdpa, safetensors only; `trust_remote_code` also
    goes to the tokenizer. The tokenizer must map the config's special-token ids (audio pad, video
    pad, image pad, vision start/end); a tokenizer without `<|audio_pad|>` gets it added as the
    release does (`add_tokens`), and its id must then be the config's `audio_token_id`."""
    from transformers import AutoTokenizer

    path = Path(path)
    cfg_file = path / "config.json"
    cfg = _read_json(cfg_file)
    cls = model_class_for(cfg, cfg_file)
    kw = {"dtype": torch.float32, "attn_implementation": "sdpa", "use_safetensors": True, **from_pretrained_kw}
    trust = bool(kw.get("trust_remote_code", False))
    try:
        config = config_from_dict(cfg, cfg_file)
        model = strict_from_pretrained(cls.from_pretrained, str(path), config=config, **kw)
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"{path}: cannot load model ({first_line(e)})") from e
    check_token_ids(model.config, tok, path)
    return model.eval(), tok


def check_token_ids(config, tok, where) -> None:
    """ModelError unless `tok` maps each special token of TOKEN_FIELDS to the config's id (a missing
    `<|audio_pad|>` is first added, as the release adds it)."""
    if AUDIO_PAD not in tok.get_vocab():
        tok.add_tokens([AUDIO_PAD])
    vocab = tok.get_vocab()
    for field, token in TOKEN_FIELDS.items():
        want = getattr(config, field)
        if vocab.get(token) != want:
            have = f"id {vocab[token]}" if token in vocab else "no such token"
            raise ModelError(f"{where}: the tokenizer has {token} as {have}, the config's {field} is {want}")
    vocab_size = config.get_text_config().vocab_size
    if config.audio_token_id >= vocab_size:
        raise ModelError(f"{where}: audio_token_id {config.audio_token_id} is outside the embedding table "
                         f"(vocab_size {vocab_size})")
