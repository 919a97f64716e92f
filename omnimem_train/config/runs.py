"""Whether a folder holds a finished run of a given config (a training run, an eval cell)."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from pathlib import Path

from omnimem_train.config.load import CONFIG_FILENAME, config_to_dict, load_config


def same_config(cfg, folder: str | Path, ignore: Collection[str] = ()) -> bool:
    """Whether `folder/config.yaml` holds `cfg`, top-level keys in `ignore` aside. Read with cfg's schema, a
    key added since reads as its default (the setting the run used); an unreadable or invalid file never matches."""
    try:
        saved = config_to_dict(load_config(Path(folder) / CONFIG_FILENAME, schema=type(cfg)))
    except Exception:
        return False
    mine = config_to_dict(cfg)
    return {k: v for k, v in saved.items() if k not in ignore} == {k: v for k, v in mine.items() if k not in ignore}


def is_finished_run(cfg, folder: str | Path, results: Iterable[str], ignore: Collection[str] = ()) -> bool:
    """Whether `folder` holds a finished run of `cfg`: each of the `results` files (written when the
    run ends) exists and is no older than `config.yaml` (rewritten when a run starts, so an
    interrupted re-run never passes for the finished run it overwrote), and `same_config`."""
    try:
        started = Path(folder, CONFIG_FILENAME).stat().st_mtime_ns
        ended = [Path(folder, name).stat().st_mtime_ns for name in results]
    except OSError:  # a file is missing
        return False
    return all(t >= started for t in ended) and same_config(cfg, folder, ignore)
