"""The memory settings a model is served with: `omnimem_memory.json` next to its weights.

Training writes it into every run/checkpoint folder (`train/trainer.py`, the settings built by
`config.load.memory_settings`), export carries it into the merged model (`export/run.py`), and serving
reads it back as a config layer (`model_memory_layer`, used by `config.load.load_serving_config`). A `budget_file` travels with it, copied next to it
as `omnimem_budget.json` and named by that relative path, so a folder serves on its own wherever it
is moved.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from omnimem_train.config.schema import MemoryConfig
from omnimem_train.errors import ConfigError, first_line

MEMORY_FILE = "omnimem_memory.json"
BUDGET_FILE = "omnimem_budget.json"
_BUDGET_KEYS = ("budget", "budget_fraction", "compression_ratio", "budget_file")  # one budget: set together or not at all


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


def model_memory_layer(model: str, set_above: set[str]) -> tuple[tuple[str, dict] | None, str | None]:
    """The `memory:` config layer from `<model>/omnimem_memory.json` (None if absent or compression
    none) and the note saying what it contributes; `set_above`: the dotted keys the layers above it set."""
    path = Path(model).expanduser() / MEMORY_FILE
    if model.startswith("builtin:") or not path.is_file():
        return None, None
    memory = _read_model_memory(path)
    if memory is None:
        return None, (f"{path}: the model was trained without compression (compression: none); "
                      "no memory settings taken from it")
    if any(f"memory.{k}" in set_above for k in _BUDGET_KEYS):
        memory = {k: v for k, v in memory.items() if k not in _BUDGET_KEYS}
    taken = {k: v for k, v in memory.items() if f"memory.{k}" not in set_above}
    _check_budget_file(path, taken.get("budget_file"))
    defaults = dataclasses.asdict(MemoryConfig())
    shown = [f"{k}={v}" for k, v in taken.items() if k not in defaults or defaults[k] != v]
    note = (f"memory settings from {path}: {', '.join(shown) or 'none differ from the defaults'} "
            "(a recipe or key=value overrides them)")
    return (str(path), {"memory": memory}), note


def _read_model_memory(path: Path) -> dict[str, Any] | None:
    """The file's MemoryConfig fields (budget_file resolved), or None for a compression-none model."""
    memory = read_memory_settings(path)
    compression = memory.pop("compression", "streaming")  # a hand-written file may leave it out
    if compression not in ("streaming", "none"):
        raise ConfigError(f"{path}: key 'compression': expected streaming | none, got {compression!r}")
    if compression == "none":
        return None
    budget_file = memory.get("budget_file")
    if isinstance(budget_file, str) and budget_file and not Path(budget_file).is_absolute():
        memory["budget_file"] = str(path.parent / budget_file)  # export writes it next to the weights
    return memory


def _check_budget_file(path: Path, budget_file: Any) -> None:
    if isinstance(budget_file, str) and not Path(budget_file).is_file():
        raise ConfigError(f"{path}: key 'budget_file': {budget_file} not found (a relative path is "
                          "resolved against the model directory)")
