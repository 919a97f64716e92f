"""Run folders and their checkpoints: complete or absent, never two runs in one folder, and a resume
that continues the run it names.

- A `checkpoint-N/` is written under a hidden sibling (`.partial-checkpoint-N/checkpoint-N/`), listed
  in `checkpoint_manifest.json` (every file and its size) and renamed into place last
  (`StreamingTrainer._save_checkpoint`). A checkpoint whose manifest is missing, unreadable or
  disagrees with the files is incomplete; `resume_from_checkpoint=latest` takes the newest complete one.
- A training run marks its folder with `.omnimem-run`. A new run refuses a folder that holds an
  earlier run's checkpoints, weights or metrics unless it resumes that run or is told to overwrite it,
  and overwriting deletes only a marked folder.
- A resume compares the checkpoint's `config.yaml` with the new config (`check_resume_config`) and
  cuts `metrics.jsonl` back to the checkpoint's step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from omnimem_train.config.load import CONFIG_FILENAME, config_to_dict, load_config
from omnimem_train.errors import ConfigError
from omnimem_train.utils.atomic import atomic_write_text

MANIFEST = "checkpoint_manifest.json"
RUN_MARKER = ".omnimem-run"
METRICS_FILE = "metrics.jsonl"
STAGING_PREFIX = ".partial-"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Files a run writes into its folder besides its checkpoints; any of them means an earlier run is there.
RUN_OUTPUTS = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json",
               "pytorch_model.bin", METRICS_FILE, "train_results.json", "trainer_state.json")

# Settings a resumed run must share with the checkpoint's run: each one shapes the weights, the data
# order or the optimizer's next step, so a change would not continue that run. A dotted entry is one
# key, a section name covers all of its keys. Keys in neither list are treated as these.
RESUME_MUST_MATCH = (
    "model_name_or_path", "dtype", "attn_implementation", "seed", "media", "memory",
    "generation.system_prompt", "generation.answer_format",
    "dataset", "dataset_split", "dataset_question_types", "group_by_media",
    "compression", "train_budget_fractions", "finetuning_type", "train_encoders",
    "lora_rank", "lora_alpha", "lora_dropout", "lora_target",
    "deepspeed", "per_device_train_batch_size", "gradient_accumulation_steps",
    "learning_rate", "weight_decay", "warmup_ratio", "lr_scheduler_type", "max_grad_norm",
)
# Settings a resumed run may change (each change is noted in the log): where the run writes, how
# often it logs and saves, how long it runs (a longer max_steps / num_train_epochs also stretches a
# decaying schedule from here on), how it computes the same numbers (device, recomputation, caches,
# loader workers), and what only serving, evaluation and calibration read.
RESUME_MAY_CHANGE = (
    "output_dir", "resume_from_checkpoint", "max_steps", "num_train_epochs", "logging_steps", "save_steps",
    "save_total_limit", "report_to", "device", "trust_remote_code", "gradient_checkpointing",
    "cache_encoder_outputs", "dataloader_num_workers", "generation.max_new_tokens", "calibration", "eval",
)


def is_main_process() -> bool:
    """Rank 0 of a launched run (`RANK` from the launcher), or a run without a launcher."""
    return os.environ.get("RANK", "0") == "0"


# --------------------------------------------------------------------------------------------
# the manifest


def write_manifest(folder: str | Path) -> Path:
    """List every file under `folder` (relative path -> size in bytes) in `folder/MANIFEST`."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): p.stat().st_size
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    return atomic_write_text(folder / MANIFEST, json.dumps({"files": files}, indent=1) + "\n")


def incomplete(folder: str | Path) -> str | None:
    """Why checkpoint `folder` is incomplete (its manifest is missing or unreadable, or a file it
    lists is missing or has another size), or None when it is complete."""
    folder = Path(folder)
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return f"no {MANIFEST}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    for name, size in files.items():
        try:
            actual = (folder / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        if actual != size:
            return f"{name} has {actual} bytes, the manifest lists {size}"
    return None


def publish(staging: Path, final: Path) -> None:
    """Write `staging`'s manifest and rename it to `final`, replacing a checkpoint of the same step
    (an incomplete one a resume skipped)."""
    write_manifest(staging)
    if final.exists():
        old = final.with_name(f"{STAGING_PREFIX}old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        shutil.rmtree(old)
    os.replace(staging, final)


def checkpoint_step(folder: str | Path) -> int:
    """The global step a (complete) checkpoint was saved at, from its trainer_state.json."""
    return int(json.loads((Path(folder) / "trainer_state.json").read_text())["global_step"])


def latest_complete(run_dir: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the newest complete `checkpoint-N` in `run_dir` or None, [(newer incomplete one, why)])."""
    found = sorted(((int(m.group(1)), p) for p in Path(run_dir).iterdir()
                    if p.is_dir() and (m := _CHECKPOINT.match(p.name))), reverse=True)
    skipped = []
    for _, path in found:
        why = incomplete(path)
        if why is None:
            return path, skipped
        skipped.append((path, why))
    return None, skipped


# --------------------------------------------------------------------------------------------
# run folders


def earlier_run(run_dir: str | Path) -> list[str]:
    """What of an earlier run `run_dir` holds: its checkpoints (newest first), then its outputs."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    steps = sorted(((int(m.group(1)), p.name) for p in run_dir.iterdir() if (m := _CHECKPOINT.match(p.name))),
                   reverse=True)
    return [name for _, name in steps] + [name for name in RUN_OUTPUTS if (run_dir / name).exists()]


def claim_run_dir(run_dir: str | Path, overwrite: bool) -> None:
    """Refuse a new run's `run_dir` when it holds an earlier run, or with `overwrite` empty it when it
    carries the run marker (`mark_run_dir`). Call on the main process only."""
    run_dir = Path(run_dir)
    held = earlier_run(run_dir)
    if held and not overwrite:
        shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
        raise ConfigError(f"{run_dir}: output_dir: holds an earlier run ({shown}); resume it with "
                          f"resume_from_checkpoint=latest or pass --overwrite")
    if held:
        if not (run_dir / RUN_MARKER).is_file():
            raise ConfigError(f"{run_dir}: output_dir: holds {', '.join(held)} but no {RUN_MARKER} marker (not a "
                              f"run folder omnimem-train wrote); --overwrite deletes only such folders: remove it "
                              f"yourself or pick another output_dir")
        shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)


def mark_run_dir(run_dir: str | Path) -> None:
    """Mark `run_dir` as a training run's folder (the one kind `claim_run_dir` may delete)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / RUN_MARKER).is_file():
        atomic_write_text(run_dir / RUN_MARKER, "A training run of omnimem-train; `train --overwrite` may delete "
                                                "this folder.\n")


def truncate_metrics(path: str | Path, step: int) -> None:
    """Keep the records of `path` (metrics.jsonl) up to `step`, where a resume continues; a torn last
    line (a run killed while appending) goes as well."""
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


# --------------------------------------------------------------------------------------------
# resume


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _listed(key: str, entries: tuple[str, ...]) -> bool:
    return any(key == e or key.startswith(e + ".") for e in entries)


def check_resume_config(checkpoint: str | Path, cfg) -> list[str]:
    """Compare `cfg` with the config the `checkpoint` was saved under. A changed setting that is not in
    RESUME_MAY_CHANGE raises one ConfigError naming each such key; returns the allowed changes as
    "key (old -> new)"."""
    path = Path(checkpoint) / CONFIG_FILENAME
    if not path.is_file():
        raise ConfigError(f"{path}: missing: the checkpoint's config is needed to check that the resume "
                          f"continues that run")
    saved = _flat(config_to_dict(load_config(path, schema=type(cfg))))
    mine = _flat(config_to_dict(cfg))
    changed = [k for k in mine if saved.get(k) != mine[k]]
    refused = [k for k in changed if not _listed(k, RESUME_MAY_CHANGE)]
    if refused:
        detail = "; ".join(f"{k}: the checkpoint was trained with {saved.get(k)}, this run asks for {mine[k]}"
                           for k in refused)
        raise ConfigError(f"{path}: {detail}; resuming would not continue that run (start a new run, or set it "
                          f"back)")
    step = checkpoint_step(checkpoint)
    if 0 < cfg.max_steps < step:
        raise ConfigError(f"{checkpoint}: max_steps: the checkpoint is at step {step}, past this run's max_steps "
                          f"{cfg.max_steps}; nothing would train (raise max_steps, or start a new run)")
    return [f"{k} ({saved.get(k)} -> {mine[k]})" for k in changed if k != "resume_from_checkpoint"]
