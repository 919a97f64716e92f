"""The grid's calibrated allocation: one per-layer [audio, visual] profile per evaluation, measured
on clips of the manifest's TRAIN split (never the evaluated split), by the same calibration path as
`omnimem-train calibrate` (`run_calibration`).

The profile's total is only its resolution (`PROFILE_TOKENS_PER_LAYER` per layer): each cell scales
it per sample to the same total as its uniform cell (`budgets.scale_profile`), so allocations
compare at equal memory. `<output_dir>/calibration/` holds the profile (with the statistics it came
from), its plot and `settings.json`, the settings it was measured with; a later run reuses it while
those are unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import TextIO

from omnimem_train.errors import ConfigError, MediaError
from omnimem_train.utils.atomic import atomic_write_text

CALIBRATION_DIR = "calibration"
PROFILE = "budget_profile.json"
SETTINGS = "settings.json"
CALIBRATION_SPLIT = "train"
PROFILE_TOKENS_PER_LAYER = 10_000
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac")
CONTEXT_SUFFIXES = (".txt",)


def calibration_path(cfg) -> Path:
    """The calibrated profile the grid uses: `eval.calibration_profile` when given, else its own."""
    if cfg.eval.calibration_profile is not None:
        return Path(cfg.eval.calibration_profile)
    return Path(cfg.output_dir) / CALIBRATION_DIR / PROFILE


def calibration_inputs(ecfg) -> list[str]:
    """The first `ecfg.calibration_clips` distinct media files of the manifest's train split."""
    from omnimem_train.data.manifest import read_manifest

    samples = read_manifest(ecfg.manifest, CALIBRATION_SPLIT)
    videos = list(dict.fromkeys(s.video or s.audio for s in samples if s.video or s.audio))
    if not videos:
        raise ConfigError(f"eval.allocations: calibrated needs clips of the {CALIBRATION_SPLIT!r} split in "
                          f"{ecfg.manifest} (the evaluated split is never used to calibrate); it has none")
    return videos[: ecfg.calibration_clips]


def _settings(cfg, inputs: list[str], model_files: dict) -> dict:
    m = cfg.memory
    return {"split": CALIBRATION_SPLIT, "inputs": inputs, "model": cfg.model_name_or_path, "model_files": model_files,
            "temperature": m.temperature, "rho": m.rho, "group_size": m.group_size, "group_seconds": m.group_seconds,
            "query_block": m.query_block, "media": dataclasses.asdict(cfg.media),
            "system_prompt": cfg.generation.system_prompt, "answer_format": cfg.generation.answer_format,
            "tokens_per_layer": PROFILE_TOKENS_PER_LAYER}


def is_calibrated(cfg, inputs: list[str], model_files: dict) -> bool:
    """The profile exists and was measured on `inputs` with the current settings and model files."""
    path = calibration_path(cfg)
    try:
        saved = json.loads((path.parent / SETTINGS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return path.is_file() and saved == _settings(cfg, inputs, model_files)


def media_args(path: str) -> dict:
    suffix = Path(path).suffix.lower()
    if suffix in CONTEXT_SUFFIXES:
        return {"context": path}
    if suffix in AUDIO_SUFFIXES:
        return {"audio": path}
    return {"video": path}


def run_calibration(adapter, cfg, inputs: list[str], output: Path, total: int, err=None):
    """Stream `inputs` uncompressed through `adapter`, measure the statistics, allocate `total`
    audio+visual tokens over the layers (T = memory.temperature, ρ = memory.rho) and write the
    budget JSON `output` (with the statistics) and its plot -> (per-layer [audio, visual], stats, scores).

    The one calibration path: `omnimem-train calibrate` and the eval grid's calibrated allocation."""
    import torch

    from omnimem_train.memory.calibrate import CalibrationCollector, allocate, layer_scores, write_budget_file
    from omnimem_train.memory.plots import plot_budgets
    from omnimem_train.models.prompt import split_chat_prompt
    from omnimem_train.streaming.engine import StreamingEngine
    from omnimem_train.streaming.inputs import media_input
    from omnimem_train.utils.progress import progress

    err = err or sys.stderr
    n_layers = len(adapter.decoder_layers)
    prefix, _ = split_chat_prompt(adapter.tokenizer, cfg.generation.system_prompt, "", cfg.generation.answer_format)
    collector = CalibrationCollector(n_layers, cfg.memory.query_block)
    used = []
    bar = progress(inputs, desc="calibrate", unit="input", file=err, leave=False)
    for k, path in enumerate(bar):
        one = CalibrationCollector(n_layers, cfg.memory.query_block)  # merged only if the whole stream reads
        engine = StreamingEngine.from_config(adapter, cfg.memory, policy=one)
        try:
            media, _ = media_input(adapter, cfg.media, **media_args(path))
            with torch.no_grad():
                state, _ = engine.prefill(adapter.stream(media, prefix))
        except MediaError as e:
            bar.write(f"warning: skipping calibration input {k + 1}/{len(inputs)}: {e}", file=err)
            continue
        collector.merge(one)
        used.append(path)
        t = one.tokens
        # through the bar, so a terminal's bar stays below the line
        bar.write(f"sample {k + 1}/{len(inputs)}: {path}: {state.tokens_seen} tokens "
                  f"({t['visual']} visual, {t['audio']} audio, {t['text']} text)", file=err)
        err.flush()
    if not used:
        raise MediaError(f"none of the {len(inputs)} calibration inputs could be read")
    stats = collector.stats()
    if all(e is None for e in stats.entropy["all"]):
        raise MediaError("the calibration inputs hold no audio or visual tokens; nothing to calibrate")
    temperature, rho = cfg.memory.temperature, cfg.memory.rho
    layers = allocate(stats, total, temperature, rho)
    scores = layer_scores(stats)
    per_layer = [{"layer": i, **row, "g": scores[i]} for i, row in enumerate(stats.per_layer())]
    meta = {"total": total, "temperature": temperature, "rho": rho, "model": cfg.model_name_or_path,
            "samples": stats.samples, "inputs": used, "tokens": stats.tokens, "stats": per_layer}
    write_budget_file(output, layers, meta)
    audio = sum(a for a, _ in layers)
    title = (f"{cfg.model_name_or_path}: {total} audio+visual tokens over {n_layers} layers\n"
             f"T={temperature:g}, rho={rho:g}, audio {audio / max(total, 1):.1%}, {stats.samples} samples")
    plot_budgets(layers, output.with_suffix(".png"), title)
    return layers, stats, scores


def calibrate_profile(adapter, cfg, model_files: dict, err: TextIO | None = None) -> Path:
    """Measure and write the profile (unless `is_calibrated`) -> its path."""
    err = err or sys.stderr
    path = calibration_path(cfg)
    if cfg.eval.calibration_profile is not None:
        if not path.is_file():
            raise ConfigError(f"eval.calibration_profile: {path}: budget file not found")
        return path
    inputs = calibration_inputs(cfg.eval)  # reads the manifest: once
    if is_calibrated(cfg, inputs, model_files):
        return path
    (path.parent / SETTINGS).unlink(missing_ok=True)  # an interrupted run must not look finished
    print(f"calibrating the allocation on {len(inputs)} {CALIBRATION_SPLIT}-split clips -> {path}", file=err,
          flush=True)
    n_layers = len(adapter.decoder_layers)
    layers, _, _ = run_calibration(adapter, cfg, inputs, path, PROFILE_TOKENS_PER_LAYER * n_layers, err=err)
    audio = sum(a for a, _ in layers) / max(sum(a + v for a, v in layers), 1)
    totals = [a + v for a, v in layers]
    print(f"calibrated profile: audio {audio:.1%} of memory, layer totals {min(totals)}..{max(totals)} "
          f"({max(totals) / max(min(totals), 1):.1f}x)", file=err, flush=True)
    atomic_write_text(path.parent / SETTINGS, json.dumps(_settings(cfg, inputs, model_files), indent=2) + "\n")
    return path
