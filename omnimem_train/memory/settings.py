"""The memory settings a model is served with: `omnimem_memory.json` next to its weights.

Training writes it into every run/checkpoint folder (`train/trainer.py`), export carries it into the
merged model (`export/run.py`), and serving reads it back as a config layer (`config/load.py`). A
`budget_file` travels with it, copied next to it as `omnimem_budget.json` and named by that relative
path, so a folder serves on its own wherever it is moved.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from omnimem_train.errors import ConfigError, first_line

MEMORY_FILE = "omnimem_memory.json"
BUDGET_FILE = "omnimem_budget.json"


def memory_settings(cfg) -> dict:
    """A run config's settings to serve its model with: {"compression": ..., <every memory.* field>}."""
    from omnimem_train.config.load import config_to_dict

    return {"compression": cfg.compression, **config_to_dict(cfg)["memory"]}


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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of memory settings, got {type(data).__name__}")
    return data
