"""Typed configuration: one dataclass per section, defaults in the field, help in the metadata.

`load.load_config` merges these defaults with a recipe YAML and `key=value` overrides through
`OmegaConf.structured`, so an unknown key or a wrong type fails at start-up. Each dataclass
checks its values in `__post_init__` and raises `FieldValueError` (a `ValueError`) naming the
field and the value; the loader adds the dotted path and the file the value came from.

To add a setting, add a field with a default and `metadata={"help": ...}` to the right section
(or a new section dataclass plus a `field(default_factory=...)` on `Config`) and, if some values
are invalid, one check line in that class's `__post_init__`: `_int(self, "lora_rank", ge=1)`,
`_number(...)`, `_choice(...)`, or `_require(ok, name, value, expected)` for anything else.
"""

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DTYPES = ("float32", "bfloat16", "float16")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
AUDIO_MODES = ("auto", "required", "off")
TRAIN_ENCODERS = ("none", "audio", "vision", "all")
# How a multiple-choice answer is written (training target) and scored (inference):
#   letter: "B. green" -- the letter first, as VideoMME-style prompts ask;
#   option: "green"    -- the option's own text, scored by likelihood as lm-eval-harness does;
#   cloze:  "green"    -- as option, but the prompt is the question alone (no option lines, no
#                         instruction): the cloze formulation of lm-eval-harness / OLMES. The answer
#                         follows the stream 16-31 tokens later instead of 47-75 on the testbed, and
#                         the prompt's length no longer depends on the options (on the testbed this
#                         did not make the temporal questions learnable).
#   completion: "green" -- plain text, no chat template: the system line, the stream, then the
#                         question as a cloze stem (its closing "?" dropped) that the answer continues
#                         directly, so the answer is predicted AT the question's last word. For
#                         models trained from scratch (the testbed's base): a small LLM learns to
#                         condition on the word it sits on long before it learns to fetch a word
#                         from earlier in the prompt (benchmarks/temporal_readout.py, docs/testbed.md).
ANSWER_FORMATS = ("letter", "option", "cloze", "completion")
_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")
DEEPSPEED_CONFIGS = ("zero2", "zero3")  # the shipped recipes/deepspeed/<name>.json
# The attribute `load.load_config` sets on each section it builds: {field: "SOURCE: key 'dotted.key'"}
# for the fields a recipe, override or settings file set (`source_of`).
SOURCES = "_sources"


class FieldValueError(ValueError):
    """A field holds an invalid value. `name` is the field (within its dataclass) and `related`
    the other fields the check compared it with, so a loader can say which source set them."""

    def __init__(self, name: str, value: Any, expected: str, related: tuple[str, ...] = ()):
        self.name = name
        self.value = value
        self.expected = expected
        self.related = related
        super().__init__(f"{name}: expected {expected}, got {value!r}")


def _require(ok: bool, name: str, value: Any, expected: str, related: tuple[str, ...] = ()) -> None:
    if not ok:
        raise FieldValueError(name, value, expected, related)


def source_of(section: Any, name: str, key: str) -> str:
    """How a message about `section.<name>` (dotted `key`) starts when it is checked after loading:
    `SOURCE: key 'KEY'`, naming the recipe, `override 'key=value'` or settings file the loader took
    the value from, or just `KEY` for a section the loader did not build or a default value."""
    return getattr(section, SOURCES, {}).get(name, key)


# One-line checks for `__post_init__`: `_int(self, "group_size", ge=1)` reads the field by name.


def _int(obj: Any, name: str, ge: int | None = None, optional: bool = False) -> None:
    value = getattr(obj, name)
    if optional and value is None:
        return
    ok = isinstance(value, int) and not isinstance(value, bool) and (ge is None or value >= ge)
    expected = "an int" + (f" >= {ge}" if ge is not None else "") + (" or null" if optional else "")
    _require(ok, name, value, expected)


def _number(obj: Any, name: str, gt: float, optional: bool = False) -> None:
    value = getattr(obj, name)
    if optional and value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > gt
    _require(ok, name, value, f"a number > {gt:g}" + (" or null" if optional else ""))


def _choice(obj: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    _require(value in choices, name, value, "one of " + " | ".join(choices))


def _text(obj: Any, name: str, what: str) -> None:
    value = getattr(obj, name)
    _require(isinstance(value, str) and value.strip() != "", name, value, what)


def _names_a_file(text: str) -> bool:
    """`text` is written as a path (a folder part or a .json suffix) or is an existing file."""
    return "/" in text or os.sep in text or text.lower().endswith(".json") or Path(text).expanduser().is_file()


def _bool(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    _require(isinstance(value, bool), name, value, "true or false")


@dataclass
class MediaConfig:
    video_fps: float = field(
        default=2.0,
        metadata={
            "help": "frames/s sampled before the vision tower (Qwen2.5-Omni: >= 1, so a "
            "2-frame temporal patch fits its 2-s chunk)"
        },
    )
    min_pixels: int = field(default=3136, metadata={"help": "min pixels per frame after resizing (56*56)"})
    max_pixels: int = field(
        default=50176,
        metadata={"help": "max pixels per frame after resizing (224*224: long streams stay affordable)"},
    )
    audio: str = field(
        default="auto",
        metadata={"help": "audio track: auto (use if present) | required (error if missing) | off"},
    )

    def __post_init__(self) -> None:
        _number(self, "video_fps", gt=0)
        _int(self, "min_pixels", ge=1)
        _int(self, "max_pixels", ge=1)
        if self.min_pixels > self.max_pixels:
            expected = f"<= max_pixels ({self.max_pixels})"
            raise FieldValueError("min_pixels", self.min_pixels, expected, related=("max_pixels",))
        _choice(self, "audio", AUDIO_MODES)


@dataclass
class MemoryConfig:
    scorer: str = field(
        default="full",
        metadata={"help": "memory method: 'full' (no compression) or a scorer name (omnimem, novelty, random, "
                          "recency, key_norm, value_norm, h2o, snapkv, keydiff, frame_drop)"},
    )
    budget: int | None = field(
        default=None,
        metadata={"help": "target_size: audio+visual tokens retained per layer (null = unlimited); "
                          "split visual:audio by rho when modality_aware"},
    )
    budget_fraction: float | None = field(
        default=None,
        metadata={"help": "relative budget in (0, 1]: per layer, this fraction of each stream's own exact "
                          "audio+visual token count (0.0625 = 1/16), fixed for the whole stream; the same "
                          "number of tokens in train, eval, infer and the session (memory/budgets.py)"},
    )
    compression_ratio: float | None = field(
        default=None,
        metadata={"help": "kvpress meaning: fraction of the audio/visual tokens seen SO FAR removed, so memory "
                          "grows with the stream (instead of budget / budget_fraction)"},
    )
    budget_file: str | None = field(
        default=None,
        metadata={"help": "per-layer budget JSON ([[audio, visual], ...] as `omnimem-train calibrate` writes it, or an "
                          "int per layer: an audio+visual cap the two share): "
                          "absolute budgets alone, or with budget / budget_fraction the allocation profile, "
                          "scaled to the same total as the uniform budget of that size"},
    )
    modality_aware: bool = field(
        default=True,
        metadata={"help": "separate audio and visual budgets (false: one pooled audio+visual budget per layer)"},
    )
    per_head: bool = field(
        default=False,
        metadata={"help": "every KV head keeps its own top tokens (the same count per head), as the per-head "
                          "references select; only snapkv, h2o, key_norm, keydiff, value_norm (false: one token "
                          "set per layer shared by all heads, OmniMem's rule)"},
    )
    rho: float = field(default=5.0, metadata={"help": "visual:audio prior for splitting a budget (METHOD §4)"})
    lam: float = field(default=0.02, metadata={"help": "lambda: attention exponent of the omnimem score (0 = novelty)"})
    temperature: float = field(default=0.2, metadata={"help": "T: layer-allocation temperature for calibration"})
    sink_tokens: int = field(default=4, metadata={"help": "recency: first audio/visual tokens always kept (sinks)"})
    window: int = field(default=32, metadata={"help": "snapkv: observation window (last queries of a group)"})
    query_block: int = field(default=256, metadata={"help": "queries per block when computing attention mass"})
    seed: int = field(default=0, metadata={"help": "random scorer seed"})
    group_size: int = field(default=1024, metadata={"help": "tokens per streaming group"})
    group_seconds: float | None = field(
        default=None,
        metadata={"help": "if set, a group is this many seconds of media instead of group_size tokens"},
    )
    sketch_dim: int | None = field(
        default=None,
        metadata={"help": "omnimem/novelty: store each token's layer-input hidden state as a fixed random "
                          "orthogonal projection to this many dims (the same matrix in every layer and group; "
                          "cosines are kept approximately), shrinking their per-token state (null = full hidden "
                          "states)"},
    )
    sketch_dtype: str | None = field(
        default=None,
        metadata={"help": "omnimem/novelty: store the (unit-normalised) hidden states or sketches in this dtype: "
                          "float16 | bfloat16 | float32 (null = the model's dtype, as computed)"},
    )

    def __post_init__(self) -> None:
        _text(self, "scorer", "a scorer name")  # the memory registry checks that it exists
        _int(self, "budget", ge=0, optional=True)
        _require(self.budget_file is None or (isinstance(self.budget_file, str) and self.budget_file.strip() != ""),
                 "budget_file", self.budget_file, "a budget JSON path or null")
        _require(self.compression_ratio is None or 0 <= self.compression_ratio < 1, "compression_ratio",
                 self.compression_ratio, "a fraction in [0, 1)")
        _require(self.budget_fraction is None or (isinstance(self.budget_fraction, (int, float))
                 and not isinstance(self.budget_fraction, bool) and 0 < self.budget_fraction <= 1),
                 "budget_fraction", self.budget_fraction, "a fraction in (0, 1]")
        given = [k for k in ("budget", "budget_fraction", "compression_ratio") if getattr(self, k) is not None]
        _require(len(given) <= 1, given[-1] if given else "budget", "both", "only one of budget, "
                 "budget_fraction, compression_ratio", related=tuple(given))
        _require(self.budget_file is None or self.compression_ratio is None, "budget_file", self.budget_file,
                 "no budget_file with compression_ratio (a file is absolute, or a profile for budget / "
                 "budget_fraction)", related=("compression_ratio",))
        _bool(self, "per_head")
        _number(self, "rho", gt=0)
        _require(self.lam >= 0, "lam", self.lam, ">= 0")
        _number(self, "temperature", gt=0)
        _int(self, "sink_tokens", ge=0)
        _int(self, "window", ge=1)
        _int(self, "query_block", ge=1)
        _int(self, "group_size", ge=1)
        _number(self, "group_seconds", gt=0, optional=True)
        _int(self, "sketch_dim", ge=1, optional=True)
        _require(self.sketch_dtype is None or self.sketch_dtype in DTYPES, "sketch_dtype", self.sketch_dtype,
                 "one of " + " | ".join(DTYPES) + " or null")


@dataclass
class GenerationConfig:
    max_new_tokens: int = field(default=32, metadata={"help": "maximum tokens generated per answer"})
    system_prompt: str = field(
        default="You are a helpful assistant that watches and listens to videos.",
        metadata={"help": "system message placed before the stream"},
    )
    answer_format: str = field(
        default="letter",
        metadata={"help": "multiple-choice answers as 'letter' (\"B. green\"), 'option' (\"green\") or "
                          "'cloze' (\"green\", the prompt without the option lines) or 'completion' (\"green\" "
                          "continuing the question's last word, no chat template): the training target "
                          "and what inference scores"},
    )

    def __post_init__(self) -> None:
        _int(self, "max_new_tokens", ge=1)
        _choice(self, "answer_format", ANSWER_FORMATS)
        _require(isinstance(self.system_prompt, str), "system_prompt", self.system_prompt, "a string")


@dataclass
class CalibrationConfig:
    inputs: list[str] = field(
        default_factory=list,
        metadata={"help": "calibration media: video files (with their audio track), audio files (.wav/.flac/...) "
                          "or, for text-only LMs, text-proxy context files (.txt); empty = num_samples "
                          "generated synthetic clips"},
    )
    num_samples: int = field(
        default=4, metadata={"help": "synthetic clips to generate when inputs is empty (different seeds/tones)"}
    )
    clip_seconds: float = field(default=8.0, metadata={"help": "length of each generated synthetic clip (s)"})
    total: int | None = field(
        default=None,
        metadata={"help": "audio+visual tokens over ALL layers the budget file distributes "
                          "(null = memory.budget x number of layers)"},
    )
    output: str | None = field(
        default=None,
        metadata={"help": "budget JSON path (null = <output_dir>/budgets.json); the plot is written "
                          "next to it with the suffix .png"},
    )

    def __post_init__(self) -> None:
        ok = isinstance(self.inputs, list) and all(isinstance(x, str) and x.strip() for x in self.inputs)
        _require(ok, "inputs", self.inputs, "a list of file paths")
        _int(self, "num_samples", ge=1)
        _number(self, "clip_seconds", gt=0)
        _int(self, "total", ge=0, optional=True)
        _require(self.output is None or (isinstance(self.output, str) and self.output.strip() != ""),
                 "output", self.output, "a non-empty path or null")


EVAL_ALLOCATIONS = ("uniform", "calibrated", "blind")
BUDGET_AXES = ("tokens", "bytes")  # eval.budget_axis
EVAL_SPLITS = ("train", "val", "test")  # omnimem_train.data.manifest.SPLITS


@dataclass
class EvalConfig:
    manifest: str | None = field(
        default=None,
        metadata={"help": "manifest JSONL of multiple-choice samples to evaluate (see omnimem_train/data); "
                          "e.g. from `python -m data_prep.tiny_qa OUT --split test`"},
    )
    split: str = field(default="test", metadata={"help": "manifest split to evaluate: train | val | test"})
    scorers: list[str] = field(
        default_factory=lambda: ["omnimem", "novelty", "recency", "random"],
        metadata={"help": "memory methods of the grid (checked against the registry at run start); "
                          "the full-memory upper bound is always evaluated as well"},
    )
    per_head_scorers: list[str] = field(
        default_factory=list,
        metadata={"help": "scorers also evaluated per KV head (memory.per_head: each KV head keeps its own top "
                          "tokens, as their references select): cells <scorer>.per_head-<budget>-<allocation>; "
                          "snapkv, h2o, key_norm, keydiff, value_norm"},
    )
    budgets: list[int] = field(
        default_factory=lambda: [128, 256, 512, 1024],
        metadata={"help": "absolute budgets of the grid: audio+visual tokens retained per layer (memory.budget)"},
    )
    budget_fractions: list[float] = field(
        default_factory=list,
        metadata={"help": "relative budgets of the grid, in (0, 1] (memory.budget_fraction): per layer, this "
                          "fraction of each sample's own exact audio+visual token count (0.0625 = 1/16)"},
    )
    allocations: list[str] = field(
        default_factory=lambda: ["uniform", "calibrated", "blind"],
        metadata={"help": "budget allocations of the grid, all at equal memory: uniform (every layer the same, "
                          "split visual:audio by memory.rho), calibrated (the per-layer [audio, visual] profile "
                          "`omnimem-train calibrate` measures on train-split clips, scaled to the uniform total) "
                          "and/or blind (one pooled audio+visual budget per layer)"},
    )
    calibration_profile: str | None = field(
        default=None,
        metadata={"help": "a per-layer [audio, visual] budget JSON to use as the calibrated allocation instead "
                          "of measuring one (e.g. the profile a model was tuned with)"},
    )
    calibration_clips: int = field(
        default=32,
        metadata={"help": "train-split clips of the manifest the calibrated allocation is measured on (never "
                          "the evaluated split)"},
    )
    cache_streams: bool = field(
        default=False,
        metadata={"help": "keep each sample's encoded stream (the towers' output) in RAM across the grid's cells, "
                          "so a clip is decoded and encoded once, not once per cell (memory: one float per "
                          "stream token per hidden unit, per sample)"},
    )
    fraction: float = field(
        default=1.0,
        metadata={"help": "evaluate the first ceil(fraction x N) samples of the split (deterministic; "
                          "smoke runs)"},
    )
    group_by: list[str] = field(
        default_factory=list,
        metadata={"help": "manifest fields beyond the standard ones (a sample's `extra`, e.g. `depth` of the long "
                          "testbed split) whose values each get an accuracy row per cell, as question types do"},
    )
    budget_axis: str = field(
        default="tokens",
        metadata={"help": "what the grid's budgets hold equal: tokens (audio+visual tokens per layer, the paper's "
                          "axis) or bytes (each cell keeps as many tokens as fit the total retained bytes, KV plus "
                          "its per-token state, of a KV-only method at that token budget; cells <name>-bytes)"},
    )

    def __post_init__(self) -> None:
        _require(self.manifest is None or (isinstance(self.manifest, str) and self.manifest.strip() != ""),
                 "manifest", self.manifest, "a manifest path or null")
        _choice(self, "split", EVAL_SPLITS)
        ok = isinstance(self.scorers, list) and all(isinstance(s, str) and s.strip() for s in self.scorers)
        _require(ok, "scorers", self.scorers, "a list of scorer names")
        ok = isinstance(self.per_head_scorers, list) and all(isinstance(x, str) and x.strip()
                                                             for x in self.per_head_scorers)
        _require(ok, "per_head_scorers", self.per_head_scorers, "a list of scorer names")
        ok = isinstance(self.budgets, list) and all(
            isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in self.budgets)
        _require(ok, "budgets", self.budgets, "a list of ints >= 1")
        ok = isinstance(self.budget_fractions, list) and all(
            isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f <= 1 for f in self.budget_fractions)
        _require(ok, "budget_fractions", self.budget_fractions, "a list of fractions in (0, 1]")
        ok = isinstance(self.allocations, list) and all(m in EVAL_ALLOCATIONS for m in self.allocations)
        _require(ok, "allocations", self.allocations, "a list of " + " | ".join(EVAL_ALLOCATIONS))
        _int(self, "calibration_clips", ge=1)
        _bool(self, "cache_streams")
        _require(self.calibration_profile is None or (isinstance(self.calibration_profile, str)
                 and self.calibration_profile.strip() != ""), "calibration_profile", self.calibration_profile,
                 "a budget JSON path or null")
        grid = [s for s in self.scorers if s != "full"] + list(self.per_head_scorers)
        _require(not grid or bool(self.budgets or self.budget_fractions), "budgets", self.budgets,
                 "at least one budget (or budget_fractions) for the scorers", related=("budget_fractions",))
        _require(not grid or bool(self.allocations), "allocations", self.allocations,
                 "at least one of " + " | ".join(EVAL_ALLOCATIONS))
        _require(isinstance(self.fraction, (int, float)) and not isinstance(self.fraction, bool)
                 and 0 < self.fraction <= 1, "fraction", self.fraction, "a fraction in (0, 1]")
        ok = isinstance(self.group_by, list) and all(isinstance(k, str) and k.strip() for k in self.group_by)
        _require(ok, "group_by", self.group_by, "a list of manifest field names")
        _choice(self, "budget_axis", BUDGET_AXES)


BAD_SAMPLE_ACTIONS = ("error", "skip")


@dataclass
class DataConfig:
    on_bad_sample: str = field(
        default="error",
        metadata={"help": "a train/eval sample whose media do not open, lack a stream they are read for, or do "
                          "not decode at both ends (every sample is checked before the model loads): error (stop, "
                          "naming the manifest line) | skip (drop it; <output_dir>/skipped.jsonl lists each "
                          "skipped line and why)"},
    )

    def __post_init__(self) -> None:
        _choice(self, "on_bad_sample", BAD_SAMPLE_ACTIONS)


@dataclass
class Config:
    model_name_or_path: str = field(
        default="builtin:tiny-omni",
        metadata={"help": "model directory, hub id, or builtin:<name> (see omnimem_train/models/builtin.py)"},
    )
    dtype: str = field(default="float32", metadata={"help": "weights/compute dtype: " + " | ".join(DTYPES)})
    device: str = field(
        default="auto", metadata={"help": "auto | cpu | cuda | cuda:N (auto = cuda if available)"}
    )
    attn_implementation: str = field(
        default="sdpa", metadata={"help": "attention kernel: " + " | ".join(ATTN_IMPLEMENTATIONS)}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "allow model code from the checkpoint folder (only for trusted models)"},
    )
    output_dir: str = field(
        default="checkpoints/infer", metadata={"help": "run folder (resolved config, outputs)"}
    )
    seed: int = field(default=0, metadata={"help": "random seed"})
    media: MediaConfig = field(default_factory=MediaConfig, metadata={"help": "media decoding"})
    memory: MemoryConfig = field(default_factory=MemoryConfig, metadata={"help": "streaming memory"})
    generation: GenerationConfig = field(
        default_factory=GenerationConfig, metadata={"help": "answer generation"}
    )
    calibration: CalibrationConfig = field(
        default_factory=CalibrationConfig,
        metadata={"help": "budget calibration (`omnimem-train calibrate`, METHOD section 4)"},
    )
    eval: EvalConfig = field(
        default_factory=EvalConfig,
        metadata={"help": "evaluation grid (`omnimem-train eval`): scorers x budgets x allocations"},
    )
    data: DataConfig = field(
        default_factory=DataConfig, metadata={"help": "checks of the train/eval samples' media"}
    )
    # --- training (`omnimem-train train`; LLaMA-Factory key names) ---------------------------
    dataset: str | None = field(default=None, metadata={"help": "training manifest (JSONL, see omnimem_train/data)"})
    dataset_split: str = field(default="train", metadata={"help": "manifest split to train on"})
    dataset_question_types: list[str] = field(
        default_factory=list,
        metadata={"help": "train only on the rows of these question types (manifest `question_type`); "
                          "empty: every row. E.g. a first stage on [temporal_order] (recipes/testbed/)"},
    )
    compression: str = field(
        default="streaming",
        metadata={"help": "streaming: train through the compressed group-wise forward (memory.*); "
                          "none: plain full-context training (one group, nothing evicted)"},
    )
    train_budget_fractions: list[float] = field(
        default_factory=list,
        metadata={"help": "[low, high]: train under a budget_fraction drawn per batch, log-uniformly in this "
                          "range (e.g. [0.03125, 0.25]), instead of memory.budget_fraction; the model is still "
                          "served (and evaluated) at memory.budget_fraction. Empty: train at memory.budget_fraction"},
    )
    finetuning_type: str = field(default="lora", metadata={"help": "lora | full"})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_target: str = field(
        default="q_proj,k_proj,v_proj",
        metadata={"help": "comma-separated LLM-decoder projections (q/k/v/o_proj, gate/up/down_proj); "
                          "anchored to the language-model layers, never the audio/vision towers"},
    )
    lora_modules_to_save: list[str] = field(
        default_factory=list,
        metadata={"help": "modules trained in full next to LoRA (peft modules_to_save; saved in the adapter), by "
                          "whole module name or its last parts, e.g. [qformer, audio_proj]: the video-SALMONN 2+ "
                          "family's Q-Former and audio projection (their audio is then encoded with autograd). "
                          "Modules only: a bare parameter (the Q-Former's q_tokens) trains with finetuning_type full"},
    )
    train_encoders: str = field(
        default="none",
        metadata={"help": "towers trained next to the LLM (full fine-tuning): " + " | ".join(TRAIN_ENCODERS)},
    )
    cache_encoder_outputs: bool = field(
        default=False,
        metadata={"help": "keep each clip's frozen-encoder outputs in RAM across epochs (with train_encoders: "
                          "audio, its log-mel input instead, re-encoded on every use); needs train_encoders "
                          "none or audio"},
    )
    group_by_media: bool = field(
        default=True,
        metadata={"help": "when the data set has several questions per clip, order rows clip by clip (clips "
                          "shuffled per epoch) so a batch holds a clip's questions together; compression: none "
                          "then runs the clip once for all of them"},
    )
    deepspeed: str | None = field(
        default=None, metadata={"help": " | ".join(DEEPSPEED_CONFIGS) + " | path to a DeepSpeed JSON"}
    )
    per_device_train_batch_size: int = field(default=1, metadata={"help": "samples per device per step"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "steps accumulated per update"})
    learning_rate: float = field(default=1e-4, metadata={"help": "peak learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_ratio: float = field(default=0.0, metadata={"help": "fraction of steps of linear warm-up"})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "transformers scheduler name"})
    num_train_epochs: float = field(default=1.0, metadata={"help": "epochs (ignored when max_steps > 0)"})
    max_steps: int = field(default=-1, metadata={"help": "total optimizer steps (-1: from epochs)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    logging_steps: int = field(default=1, metadata={"help": "log every N steps"})
    save_steps: int = field(default=500, metadata={"help": "checkpoint every N steps"})
    save_total_limit: int | None = field(default=None, metadata={"help": "keep at most N checkpoints"})
    report_to: str = field(default="wandb", metadata={"help": "wandb | none (wandb runs offline unless WANDB_MODE is set)"})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "checkpoint folder to resume from, or 'latest' in output_dir"}
    )
    gradient_checkpointing: bool = field(
        default=True, metadata={"help": "recompute each streaming group in backward (memory bounded by the budget)"}
    )
    memory_grad_groups: int | str = field(
        default="all",
        metadata={"help": "all | k: how many of a stream's last groups the gradient reaches through the retained "
                          "memory (compression: streaming). all: every group (activation memory grows with the "
                          "stream). k >= 1: the last k; older groups run without autograd and their memory is used "
                          "detached, so activation memory stays flat in the stream's length"},
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "data loader worker processes"})

    def __post_init__(self) -> None:
        _text(self, "model_name_or_path", "a model directory, hub id or builtin:<name>")
        _choice(self, "dtype", DTYPES)
        device_ok = isinstance(self.device, str) and _DEVICE_RE.fullmatch(self.device) is not None
        _require(device_ok, "device", self.device, "auto | cpu | cuda | cuda:N")
        _choice(self, "attn_implementation", ATTN_IMPLEMENTATIONS)
        _bool(self, "trust_remote_code")
        _text(self, "output_dir", "a non-empty path")
        _int(self, "seed")
        _choice(self, "compression", ("streaming", "none"))
        rng = self.train_budget_fractions
        ok = isinstance(rng, list) and (not rng or (len(rng) == 2 and all(
            isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f <= 1 for f in rng) and rng[0] <= rng[1]))
        _require(ok, "train_budget_fractions", rng, "[] or [low, high] with 0 < low <= high <= 1")
        _require(not rng or (self.compression == "streaming" and self.memory.budget_fraction is not None),
                 "train_budget_fractions", rng, "used with compression: streaming and a memory.budget_fraction "
                 "(the budget the model is served at)", related=("memory.budget_fraction",))
        ds = self.deepspeed
        _require(ds is None or (isinstance(ds, str) and (ds.strip().lower() in ("", "none", *DEEPSPEED_CONFIGS)
                                                         or _names_a_file(ds))),
                 "deepspeed", ds, " | ".join(DEEPSPEED_CONFIGS) + " | none | a path to a DeepSpeed JSON file")
        _choice(self, "finetuning_type", ("lora", "full"))
        _int(self, "lora_rank", ge=1)
        _number(self, "lora_alpha", gt=0)
        _require(isinstance(self.lora_dropout, (int, float)) and 0 <= self.lora_dropout < 1, "lora_dropout",
                 self.lora_dropout, "a number in [0, 1)")
        _text(self, "lora_target", "comma-separated projection names")
        saved = self.lora_modules_to_save
        _require(isinstance(saved, list) and all(isinstance(n, str) and re.fullmatch(r"[\w.]+", n) for n in saved)
                 and not (saved and self.finetuning_type == "full"), "lora_modules_to_save", saved,
                 "a list of module names (letters, digits, _ and .), used with finetuning_type lora",
                 related=("finetuning_type",))
        _int(self, "per_device_train_batch_size", ge=1)
        _int(self, "gradient_accumulation_steps", ge=1)
        _number(self, "learning_rate", gt=0)
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        _require(0 <= self.warmup_ratio < 1, "warmup_ratio", self.warmup_ratio, "a fraction in [0, 1)")
        _number(self, "num_train_epochs", gt=0)
        _int(self, "max_steps", ge=-1)
        _int(self, "logging_steps", ge=1)
        _int(self, "save_steps", ge=1)
        _int(self, "save_total_limit", ge=1, optional=True)
        _choice(self, "report_to", ("wandb", "none"))
        _int(self, "dataloader_num_workers", ge=0)
        k = self.memory_grad_groups
        _require(k == "all" or (isinstance(k, int) and not isinstance(k, bool) and k >= 1), "memory_grad_groups", k,
                 "all or an int >= 1")
        _require(k == "all" or self.compression == "streaming", "memory_grad_groups", k,
                 "all with compression: none (the full-context loss runs one group)", related=("compression",))
        _bool(self, "cache_encoder_outputs")
        _bool(self, "group_by_media")
        _choice(self, "train_encoders", TRAIN_ENCODERS)
        # A cached stream holds vision-tower outputs; only the audio tower (whose input, the log-mel,
        # is small enough to keep) can train on top of it.
        _require(not (self.cache_encoder_outputs and self.train_encoders in ("vision", "all")),
                 "cache_encoder_outputs", self.cache_encoder_outputs,
                 f"false while train_encoders is {self.train_encoders} (a trained vision tower changes its outputs)",
                 related=("train_encoders",))
        # peft saves only adapter tensors: towers trained next to LoRA would be silently lost at save.
        _require(not (self.train_encoders != "none" and self.finetuning_type == "lora"), "train_encoders",
                 self.train_encoders, "none with finetuning_type lora (train the towers with finetuning_type "
                 "full; a LoRA checkpoint holds only the adapter)", related=("finetuning_type",))
