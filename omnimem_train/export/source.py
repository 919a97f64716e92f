"""What a training folder holds, read before any model is loaded.

`find_source(path)` takes a run folder (the `output_dir` of `omnimem-train train`) or one of its
`checkpoint-N/` folders and returns a `TrainedSource`: the base model it was trained from (the saved
`config.yaml`'s `model_name_or_path`, or `--base`), LoRA or full weights, the safetensors file(s)
holding them, or the DeepSpeed `global_stepN/` folder to consolidate them from when those files are
missing or hold only empty (0-element) ZeRO-3 placeholders, and the memory settings of the run.

Only safetensors weights are read: a folder that holds nothing but pickled `.bin` weights is refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from omnimem_train.config.served import GENERATION_KEYS, MEMORY_FILE, read_memory_settings
from omnimem_train.errors import ConfigError, ModelError, first_line
from omnimem_train.models.load import tensor_shapes

RUN_CONFIG = "config.yaml"
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
FULL_FILE = "model.safetensors"
FULL_INDEX = "model.safetensors.index.json"
PICKLES = {"lora": "adapter_model.bin", "full": "pytorch_model.bin"}
_CHECKPOINT = re.compile(r"^checkpoint-\d+$")
_GLOBAL_STEP = re.compile(r"^global_step(\d+)$")


@dataclass
class TrainedSource:
    """One folder's trained weights and what they belong to.

    folder:          the run or checkpoint folder given
    base:            model_name_or_path of the base model (builtin:<name>, a folder, a hub id)
    finetuning_type: "lora" (adapter_model.safetensors + adapter_config.json) or "full" (model weights)
    weights:         safetensors files holding the trained tensors ([] when they must be consolidated)
    zero_dir:        DeepSpeed `global_stepN/` folder to consolidate from (None when `weights` are used)
    why_consolidate: why the safetensors weights could not be used (for the log)
    memory:          the settings the run serves with (`omnimem_memory.json`: memory and generation)
    budget_file:     the budget JSON named by `memory["budget_file"]`, resolved to an existing file
    """

    folder: Path
    base: str
    finetuning_type: str
    weights: list[Path]
    zero_dir: Path | None
    why_consolidate: str | None
    memory: dict
    budget_file: Path | None = None

    @property
    def is_checkpoint(self) -> bool:
        return bool(_CHECKPOINT.match(self.folder.name))

    @property
    def method(self) -> str:
        """lora-merge | zero-consolidated | full (what `omnimem_export.json` records)."""
        if self.zero_dir is not None:
            return "zero-consolidated"
        return "lora-merge" if self.finetuning_type == "lora" else "full"

    def describe(self) -> str:
        kind = "LoRA adapter" if self.finetuning_type == "lora" else "full weights"
        if self.zero_dir is not None:
            return f"{kind} consolidated from DeepSpeed shards {self.zero_dir} ({self.why_consolidate})"
        return f"{kind} from {', '.join(str(w) for w in self.weights)}"


def default_output(folder: Path) -> Path:
    """`<run>/merged` for a run folder; `<run>/merged-checkpoint-N` for `<run>/checkpoint-N` (next to,
    not inside, the checkpoint, so the export outlives the Trainer's checkpoint rotation)."""
    if _CHECKPOINT.match(folder.name):
        return folder.parent / f"merged-{folder.name}"
    return folder / "merged"


def find_source(path: str | Path, base: str | None = None) -> TrainedSource:
    """Read `path` (run or checkpoint folder); raise ConfigError/ModelError naming the folder or file."""
    folder = Path(path)
    if not folder.exists():
        raise ConfigError(f"{folder}: export source not found")
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder (expected a training run or checkpoint-N folder)")
    cfg = _read_run_config(folder)
    finetuning = cfg.get("finetuning_type", "lora")
    if finetuning not in PICKLES:
        raise ConfigError(f"{folder / RUN_CONFIG}: finetuning_type {finetuning!r}: expected lora or full")
    base = base or cfg.get("model_name_or_path")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{folder / RUN_CONFIG}: no model_name_or_path (give the base model with --base)")
    memory = _read_memory(folder, cfg)
    weights, zero_dir, why = _find_weights(folder, finetuning)
    return TrainedSource(folder, base, finetuning, weights, zero_dir, why, memory,
                         _resolve_budget_file(folder, memory))


def _read_run_config(folder: Path) -> dict:
    f = folder / RUN_CONFIG
    if not f.is_file():
        what = "empty folder" if not any(folder.iterdir()) else f"no {RUN_CONFIG}"
        raise ConfigError(f"{folder}: {what}: not an omnimem-train run or checkpoint folder")
    try:
        cfg = yaml.safe_load(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{f}: unreadable run config ({first_line(e)})") from e
    if not isinstance(cfg, dict):
        raise ConfigError(f"{f}: expected a mapping of config keys")
    return cfg


def _read_memory(folder: Path, cfg: dict) -> dict:
    """The run's `omnimem_memory.json`; without one (an older run), the same keys from config.yaml.
    A file without the "generation" section takes the prompt the run trained on from config.yaml,
    so the export answers in its trained format without the caller naming it."""
    f = folder / MEMORY_FILE
    if not f.is_file():
        memory = {"compression": cfg.get("compression", "streaming"), **(cfg.get("memory") or {})}
    else:
        memory = read_memory_settings(f)
    generation = cfg.get("generation")
    if "generation" not in memory and isinstance(generation, dict):
        memory["generation"] = {k: generation[k] for k in GENERATION_KEYS if k in generation}
    return memory


def _resolve_budget_file(folder: Path, memory: dict) -> Path | None:
    """The run's budget_file as given (absolute, or relative to the working directory), else relative
    to the run/checkpoint folder or its parent."""
    name = memory.get("budget_file")
    if not name:
        return None
    p = Path(name)
    candidates = [p] if p.is_absolute() else [p, folder / p, folder.parent / p]
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(f"{folder / MEMORY_FILE}: budget_file {name}: file not found "
                      f"(looked in {', '.join(str(c) for c in candidates)})")


def _find_weights(folder: Path, finetuning: str) -> tuple[list[Path], Path | None, str | None]:
    """(safetensors files, None, None), or ([], global_stepN folder, reason) when consolidating."""
    if finetuning == "lora" and not (folder / ADAPTER_CONFIG).is_file():
        raise ModelError(f"{folder}: no {ADAPTER_CONFIG} (not a LoRA run folder){_checkpoint_hint(folder)}")
    files = _weight_files(folder, finetuning)
    zero_dir = find_zero_dir(folder)
    name = ADAPTER_FILE if finetuning == "lora" else FULL_FILE
    if not files:
        why = f"{name} is missing"
    else:
        shapes = {}
        for f in files:
            shapes.update(tensor_shapes(f))
        empty = [k for k, s in shapes.items() if _numel(s) == 0]
        if shapes and not empty:
            return files, None, None
        why = (f"{name} holds {len(empty)} empty (0-element) tensors, ZeRO-3 placeholders" if empty
               else f"{name} holds no tensors")
    if zero_dir is not None:
        return [], zero_dir, why
    pickle = folder / PICKLES[finetuning]
    if not files and pickle.exists():
        raise ModelError(f"{pickle}: pickled weights are not loaded (safetensors only); "
                         f"re-save them as {name}")
    raise ModelError(f"{folder}: {why} and there is no DeepSpeed global_step* folder to consolidate from"
                     f"{_checkpoint_hint(folder)}")


def _weight_files(folder: Path, finetuning: str) -> list[Path]:
    if finetuning == "lora":
        f = folder / ADAPTER_FILE
        return [f] if f.is_file() else []
    index = folder / FULL_INDEX
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ModelError(f"{index}: unreadable shard index ({first_line(e)})") from e
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise ModelError(f"{index}: shard {missing[0]} is missing")
        return [folder / n for n in names]
    f = folder / FULL_FILE
    return [f] if f.is_file() else []


def find_zero_dir(folder: Path) -> Path | None:
    """The DeepSpeed checkpoint tag folder: the one `latest` names, else the highest global_stepN."""
    latest = folder / "latest"
    if latest.is_file():
        tag = latest.read_text().strip()
        if tag and (folder / tag).is_dir():
            return folder / tag
    steps = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _GLOBAL_STEP.match(p.name))]
    return max(steps)[1] if steps else None


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _checkpoint_hint(folder: Path) -> str:
    ckpts = sorted((p.name for p in folder.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)),
                   key=lambda n: int(n.split("-")[1]))
    return f"; checkpoints here: {', '.join(ckpts)} (export one of them)" if ckpts else ""
