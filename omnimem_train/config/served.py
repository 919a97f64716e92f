"""The settings a model is served with: `omnimem_memory.json` next to its weights.

It holds what a model needs to answer as it was trained: its memory settings (`compression` and
every `memory.*` field, at the top level) and, under "generation", the prompt its weights learned
(`answer_format`, `system_prompt`: a model trained on one answer format answers near chance when
scored in another). `max_new_tokens` is a serving choice, not something the weights learned, so it
is not saved.

Training writes it into every run/checkpoint folder (`train/trainer.py`, the settings built by
`served_settings`), export carries it into the merged model (`export/run.py`), and serving reads it
back as a config layer (`model_memory_layer`, used by `config.load.load_serving_config`). A
`budget_file` travels with it, copied next to it as `omnimem_budget.json` and named by that relative
path, so a folder serves on its own wherever it is moved. A file without "generation" sets no
generation key (the defaults or the recipe apply).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

from omnimem_train.config.schema import GenerationConfig, MemoryConfig
from omnimem_train.errors import ConfigError, first_line

MEMORY_FILE = "omnimem_memory.json"
BUDGET_FILE = "omnimem_budget.json"
# One budget: set together or not at all.
_BUDGET_KEYS = ("budget", "budget_fraction", "compression_ratio", "budget_file")
# The prompt the weights were trained on: the model's "generation" section.
GENERATION_KEYS = ("answer_format", "system_prompt")
# What full memory (it keeps every token) reads of memory.*: the grouping of the stream. Its
# budget, allocation and scorer settings are not in effect.
_FULL_MEMORY_KEYS = ("group_size", "group_seconds")


def served_settings(cfg) -> dict:
    """A run config's settings to serve its model with: {"compression": ..., <every memory.* field>,
    "generation": {answer_format, system_prompt}}."""
    return {"compression": cfg.compression, **dataclasses.asdict(cfg.memory),
            "generation": {k: getattr(cfg.generation, k) for k in GENERATION_KEYS}}


def write_memory_settings(folder: str | Path, settings: dict, budget_file: str | Path | None = None) -> None:
    """Write `settings` as `folder/MEMORY_FILE`; `budget_file` (if any) is copied in as BUDGET_FILE and
    the settings name it by that relative path."""
    folder, settings = Path(folder), dict(settings)
    if budget_file:
        shutil.copyfile(budget_file, folder / BUDGET_FILE)
        settings["budget_file"] = BUDGET_FILE
    (folder / MEMORY_FILE).write_text(json.dumps(settings, indent=2) + "\n")


def read_memory_settings(path: str | Path) -> dict:
    """The JSON object in `path`; anything else is a one-line ConfigError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {first_line(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of memory settings, got {type(data).__name__}")
    return data


def model_memory_layer(model: str, set_above: set[str], above: Any = None,
                       set_later: Collection[str] = ()) -> tuple[tuple[str, dict] | None, str | None]:
    """The config layer from `<model>/omnimem_memory.json` (`memory:` and `generation:`; None if
    absent or it sets nothing) and the note saying what it contributes.

    set_above: the dotted keys the layers above it set; above: the config those layers resolve to
    (the memory method in effect decides which of the model's settings the note lists); set_later:
    dotted keys the caller replaces itself after loading (the eval grid's per-cell scorer and
    budget), taken into the config but not listed as in effect. A model trained without compression
    contributes no memory settings (they never shaped its weights), only its generation settings."""
    path = Path(model).expanduser() / MEMORY_FILE
    if model.startswith("builtin:") or not path.is_file():
        return None, None
    memory, generation = _read_served(path)
    layer: dict[str, dict] = {}
    if memory is not None:
        if any(f"memory.{k}" in set_above for k in _BUDGET_KEYS):
            memory = {k: v for k, v in memory.items() if k not in _BUDGET_KEYS}
        _check_budget_file(path, None if "memory.budget_file" in set_above else memory.get("budget_file"))
        layer["memory"] = memory
    if generation:
        layer["generation"] = generation
    hidden = set(set_above) | set(set_later)
    scorer = _scorer(memory, set_above, above, set_later)
    shown, unused = _in_effect("memory", memory or {}, MemoryConfig(), hidden, scorer)
    shown += _in_effect("generation", generation, GenerationConfig(), hidden)[0]
    listed = ", ".join(shown)
    if memory is None:
        note = (f"{path}: the model was trained without compression (compression: none); no memory settings "
                "taken from it" + (f"; taken: {listed} (a recipe or key=value overrides them)" if shown else ""))
    else:
        note = (f"served settings from {path}: {listed or 'none differ from the defaults'} "
                "(a recipe or key=value overrides them)")
        if unused:
            note += f"; its budget and scorer settings do not apply to memory.scorer={scorer}"
    return ((str(path), layer) if layer else None), note


def _scorer(memory: dict | None, set_above: set[str], above: Any, set_later: Collection[str]) -> str | None:
    """The memory method the served config runs with (None: not known here)."""
    if "memory.scorer" in set_later:
        return None
    if "memory.scorer" in set_above:
        return getattr(getattr(above, "memory", None), "scorer", None)
    return (memory or {}).get("scorer", MemoryConfig().scorer)


def _in_effect(section: str, taken: dict, defaults: Any, hidden: set[str],
               scorer: str | None = None) -> tuple[list[str], int]:
    """(`section.key=value` for the model's settings that no other layer sets, that differ from the
    defaults and that the method in effect reads (full memory reads only its grouping); how many
    such settings it does not read)."""
    out, unused = [], 0
    for key, value in taken.items():
        dotted = f"{section}.{key}"
        if dotted in hidden or getattr(defaults, key, object()) == value:
            continue
        if section == "memory" and scorer == "full" and key not in _FULL_MEMORY_KEYS:
            unused += 1
            continue
        out.append(f"{dotted}={value!r}" if key == "system_prompt" else f"{dotted}={value}")
    return out, unused


def _read_served(path: Path) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the file's MemoryConfig fields, budget_file resolved, or None for a compression-none model;
    its generation settings, {} when it has none)."""
    memory = read_memory_settings(path)
    generation = memory.pop("generation", None)
    if generation is None:
        generation = {}
    elif not isinstance(generation, dict):
        raise ConfigError(f"{path}: key 'generation': expected a JSON object of generation settings "
                          f"({', '.join(GENERATION_KEYS)}), got {generation!r}")
    compression = memory.pop("compression", "streaming")  # a hand-written file may leave it out
    if compression not in ("streaming", "none"):
        raise ConfigError(f"{path}: key 'compression': expected streaming | none, got {compression!r}")
    if compression == "none":
        return None, generation
    budget_file = memory.get("budget_file")
    if isinstance(budget_file, str) and budget_file and not Path(budget_file).is_absolute():
        memory["budget_file"] = str(path.parent / budget_file)  # export writes it next to the weights
    return memory, generation


def _check_budget_file(path: Path, budget_file: Any) -> None:
    if isinstance(budget_file, str) and not Path(budget_file).is_file():
        raise ConfigError(f"{path}: key 'budget_file': {budget_file} not found (a relative path is "
                          "resolved against the model directory)")
