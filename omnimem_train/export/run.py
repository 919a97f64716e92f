"""The export recipe, top to bottom: `omnimem-train export SRC [--output DIR] [...]`.

find (what SRC holds, refuse a bad output before any work) -> load the base model in fp32 on CPU ->
put the trained weights in (attach LoRA, or load full weights; from DeepSpeed shards if need be) ->
reference logits of base + adapter on the probe -> merge -> save into a hidden temporary folder
(weights as safetensors shards, config, tokenizer, processor files, omnimem_memory.json, the budget
file) -> reload that folder with `models.load.load_adapter` and compare logits -> for a full
Qwen2.5-Omni base, compare the talker/token2wav bytes -> write omnimem_export.json -> rename the
folder into place.
"""

from __future__ import annotations

import gc
import json
import shutil
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from omnimem_train.config.served import write_memory_settings
from omnimem_train.errors import ConfigError, ModelError
from omnimem_train.export.merge import attach_lora, load_full_weights, merge_lora
from omnimem_train.export.omni import (
    check_parts_identical,
    is_full_omni,
    model_type,
    restore_part_dtypes,
    stored_dtypes,
)
from omnimem_train.export.publish import EXPORT_FILE, check_output, staged_folder
from omnimem_train.export.source import TrainedSource, default_output, find_source, tensor_shapes
from omnimem_train.export.verify import max_abs_diff, probe_logits
from omnimem_train.utils.atomic import atomic_write_text

# Copied from the base folder when present (the tokenizer is re-saved, not copied).
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json",
                   "chat_template.json")
SPEAKERS_FILE = "spk_dict.pt"  # the talker's voices: a full Omni checkpoint does not load without it


def export_run(src: str | Path, output: str | Path | None = None, *, overwrite: bool = False,
               max_shard_size: str = "5GB", thinker_only: bool = False, base: str | None = None,
               trust_remote_code: bool = False, atol: float = 1e-4, log: Callable[[str], None] = print) -> dict:
    """Export the run/checkpoint folder `src` as a standalone model folder; returns the export record
    (what `omnimem_export.json` holds, plus "output")."""
    source = find_source(src, base)
    out = Path(output) if output else default_output(source.folder)
    check_output(out, source.folder, overwrite)
    _check_shard_size(max_shard_size)
    base_dir = base_folder(source.base)
    full_omni = is_full_omni(base_dir) and not thinker_only
    log(f"export: {source.folder} -> {out}")
    if thinker_only and not is_full_omni(base_dir):
        log("note:   --thinker-only changes nothing: the base is not a full Qwen2.5-Omni model")
    log(f"source: {source.describe()}")
    log(f"base:   {source.base} ({'thinker + talker + token2wav' if full_omni else model_type(base_dir) or 'model'})")
    with staged_folder(out, overwrite, log) as tmp:
        record = _build(source, base_dir, tmp, full_omni, max_shard_size, trust_remote_code, atol, log)
        atomic_write_text(tmp / EXPORT_FILE, json.dumps(record, indent=2) + "\n")  # written last: "complete"
    log(f"saved:  {out} ({record['method']}; {', '.join(sorted(p.name for p in out.iterdir()))})")
    return {**record, "output": str(out)}


def base_folder(base: str) -> Path:
    """The folder holding the base model's files: builtin:<name>, a local folder, or a cached hub id."""
    from omnimem_train.models.builtin import resolve_builtin

    if base.startswith("builtin:"):
        path = resolve_builtin(base.split(":", 1)[1])[0]
    elif Path(base).expanduser().is_dir():
        path = Path(base).expanduser()
    else:
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(base, local_files_only=True))
        except Exception as e:  # not a repo id, not cached, ...: all mean "no such base here"
            raise ModelError(f"{base}: base model not found (a local folder, builtin:<name> or a cached hub "
                             f"id; give it with --base)") from e
    for f in sorted(path.glob("*.safetensors")):
        tensor_shapes(f)  # a corrupted base file fails here, naming it
    return path


def _build(source: TrainedSource, base_dir: Path, tmp: Path, full_omni: bool, max_shard_size: str,
           trust_remote_code: bool, atol: float, log) -> dict:
    from omnimem_train.models.load import load_adapter, load_full_omni

    if full_omni:
        full, adapter = load_full_omni(base_dir, trust_remote_code)
    else:
        full, adapter = None, load_adapter(source.base, "float32", "cpu", "sdpa", trust_remote_code)
    n_layers = len(adapter.decoder_layers)
    model = adapter.model
    if source.finetuning_type == "lora":
        peft_model = attach_lora(model, source)  # `adapter` now computes base + LoRA
        reference = probe_logits(adapter)
        n = sum(1 for name, _ in peft_model.named_modules() if name.endswith(".lora_A"))
        model = merge_lora(peft_model)
        log(f"merged: LoRA (r={peft_model.peft_config['default'].r}) into {n} projections")
        del peft_model
    else:
        n = load_full_weights(model, source)
        reference = probe_logits(adapter)
        log(f"loaded: {n} trained tensors")
    if full is not None:  # `model` is full.thinker, merged in place
        restore_part_dtypes(full, stored_dtypes(base_dir))
        full.save_pretrained(str(tmp), max_shard_size=max_shard_size)
    else:
        model.save_pretrained(str(tmp), max_shard_size=max_shard_size)
    adapter.tokenizer.save_pretrained(str(tmp))
    _copy_processor_files(base_dir, tmp, speakers=full is not None)
    _write_memory(source, tmp, n_layers)
    del full, model, adapter
    gc.collect()

    exported = load_adapter(str(tmp), "float32", "cpu", "sdpa", trust_remote_code)
    got = probe_logits(exported)
    diff = max_abs_diff(reference, got)
    if not diff <= atol:
        raise ModelError(f"{source.folder}: export verification failed: max |logit difference| {diff:.3g} "
                         f"between base + trained weights and the exported model exceeds {atol:g}")
    log(f"verify: max |logit difference| {diff:.2e} over {reference.shape[1]} probe tokens (tolerance {atol:g})")
    record = {
        "source": str(source.folder.resolve()),
        "base": source.base,
        "base_dir": str(base_dir.resolve()),
        "method": source.method,
        "finetuning_type": source.finetuning_type,
        "consolidated_from": str(source.zero_dir) if source.zero_dir else None,
        "model_type": model_type(tmp),
        "verification": {"max_abs_logit_diff": diff, "atol": atol, "probe_tokens": int(reference.shape[1])},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if full_omni:
        record["identical_base_tensors"] = check_parts_identical(base_dir, tmp)
        log(f"verify: {record['identical_base_tensors']} talker/token2wav tensors byte-identical to the base")
    return record


def _copy_processor_files(base_dir: Path, tmp: Path, speakers: bool) -> None:
    for name in PROCESSOR_FILES + ((SPEAKERS_FILE,) if speakers else ()):
        if (base_dir / name).is_file() and not (tmp / name).exists():
            shutil.copyfile(base_dir / name, tmp / name)


def _write_memory(source: TrainedSource, tmp: Path, n_layers: int) -> None:
    """The run's memory settings; a budget_file is copied in and named relative to the model folder."""
    from omnimem_train.memory.budgets import read_budget_file

    if source.budget_file is not None:
        read_budget_file(source.budget_file, n_layers)  # ConfigError naming the file if it does not fit
    write_memory_settings(tmp, source.memory, source.budget_file)


def _check_shard_size(value: str) -> None:
    from transformers.utils.hub import convert_file_size_to_int

    try:
        if convert_file_size_to_int(value) <= 0:
            raise ValueError("not positive")
    except (ValueError, TypeError) as e:
        raise ConfigError(f"--max-shard-size {value}: expected a size such as 5GB or 500MB") from e
