"""The evaluation grid: scorers x budgets x allocations {uniform, calibrated, blind}, plus full memory.

Layout of `<output_dir>` after `run_eval(cfg)`:

    config.yaml                      the resolved eval config
    calibration/budget_profile.json  (with a calibrated allocation) the per-layer [audio, visual]
                                     profile and the statistics it came from, measured by the
                                     calibration path of `omnimem-train calibrate` on clips of the
                                     manifest's TRAIN split; budget_profile.png plots it
    cells/<cell>/config.yaml         the resolved config of one cell (its memory.* settings; usable
                                     as an eval recipe that repeats just this cell and full memory)
    cells/<cell>/predictions.jsonl   one record per sample (see `PREDICTION_FIELDS`)
    cells/<cell>/metrics.json        accuracy, 95% Wilson CI, per question type, retained bytes,
                                     samples/s (`metrics.compute_metrics`) + the cell's identity
    summary.json                     every cell's metrics, in grid order, and the paired comparisons
    skipped.jsonl                    (data.on_bad_sample: skip) the samples left out of every cell
                                     because their media do not decode (`data.probe`)
    summary.md                       the table and the paired comparisons as Markdown
    accuracy_vs_budget.png           accuracy vs budget, one line per scorer and allocation

Cell names: `full` (always evaluated: the upper bound), `<scorer>-<budget>-<allocation>` for an
absolute budget (audio+visual tokens per layer) and `<scorer>-f<fraction>-<allocation>` for a
fraction of each sample's own exact audio+visual tokens (`memory.budget_fraction`). Every
allocation of one budget holds the same number of tokens over all layers (`budgets.scale_profile`).
With `eval.budget_axis: bytes` every cell but `full` is named `<...>-bytes` and keeps, per sample, as
many tokens as fit the total retained bytes (KV + extra state) of a KV-only method at the cell's
token budget (`memory.budgets.EqualBytes`): a method storing hidden states per token keeps fewer.
`frame_drop` drops time steps before the LLM, the same in every layer, so it has no calibrated cell.

A cell is finished (`config.runs.is_finished_run`) when its metrics.json (written last, atomically)
and predictions.jsonl are no older than its config.yaml, which still matches the current settings
(output_dir aside), and the files it read are the ones it read then (`input_files`: the model
folder's weights and config.json, the manifest, the calibrated profile; by size and modification
time): a re-run skips it, and loads no model when every cell is finished. A cell whose settings
changed (e.g. another `eval.fraction`) or whose model was retrained in place is re-run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TextIO

from omnimem_train.config.runs import is_finished_run, same_config
from omnimem_train.errors import ConfigError, MediaError
from omnimem_train.eval.calibration import calibrate_profile, calibration_inputs, calibration_path
from omnimem_train.eval.metrics import compute_metrics
from omnimem_train.utils.atomic import atomic_write_text

CELLS_DIR = "cells"
PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
SUMMARY = "summary.json"
PLOT = "accuracy_vs_budget.png"
# Fields of a predictions.jsonl record, in order.
PREDICTION_FIELDS = (
    "id", "question_type", "answer", "choice", "correct", "option_scores", "budget", "expected_tokens",
    "tokens_seen", "retained_kv_bytes", "retained_total_bytes",
    "retained_media_tokens",  # audio+visual tokens kept per layer (mean over layers)
    "stream_seconds", "seconds",
    "groups",  # only with eval.group_by: {field: value}
)


@dataclass(frozen=True)
class Cell:
    """One run of the grid. `scorer == "full"`: no compression (budget, fraction, allocation None)."""

    scorer: str
    budget: int | None = None
    budget_fraction: float | None = None
    allocation: str | None = None  # "uniform" | "calibrated" | "blind"
    per_head: bool = False  # memory.per_head: every KV head its own top tokens
    budget_axis: str = "tokens"  # eval.budget_axis: "bytes" sizes the budget at equal total bytes

    @property
    def is_full(self) -> bool:
        return self.scorer == "full"

    @property
    def method(self) -> str:
        """The scorer as the tables name it: `snapkv`, or `snapkv.per_head` for the per-head variant."""
        return f"{self.scorer}.per_head" if self.per_head else self.scorer

    @property
    def budget_label(self) -> str:
        if self.budget is not None:
            return str(self.budget)
        return "-" if self.budget_fraction is None else f"f{self.budget_fraction:g}"

    @property
    def name(self) -> str:
        if self.is_full:
            return "full"
        return f"{self.method}-{self.budget_label}-{self.allocation}" + ("-bytes" if self.budget_axis == "bytes" else "")

    def identity(self) -> dict:
        return {"cell": self.name, "scorer": self.method, "budget": self.budget,
                "budget_fraction": self.budget_fraction, "allocation": self.allocation, "per_head": self.per_head,
                "budget_axis": self.budget_axis}


def _unique(items):
    return list(dict.fromkeys(items))


def grid_cells(ecfg) -> list[Cell]:
    """`EvalConfig` -> the cells, full memory first, then scorer x (budgets, fractions) x allocation
    (no calibrated frame_drop: it has no per-layer memory to allocate; a grid of calibrated cells only
    gives it its uniform cell)."""
    cells = [Cell("full")]
    sizes = [{"budget": b} for b in _unique(ecfg.budgets)]
    sizes += [{"budget_fraction": f} for f in _unique(float(f) for f in ecfg.budget_fractions)]
    variants = [(s, False) for s in _unique(ecfg.scorers) if s != "full"]
    variants += [(s, True) for s in _unique(ecfg.per_head_scorers)]
    for scorer, per_head in variants:
        allocations = _unique(ecfg.allocations)
        if scorer == "frame_drop":  # the same in every layer: a calibrated grid gives it the uniform cell
            allocations = [a for a in allocations if a != "calibrated"] or ["uniform"]
        cells += [Cell(scorer, allocation=a, per_head=per_head, budget_axis=ecfg.budget_axis, **size)
                  for size in sizes for a in allocations]
    return cells


def check_scorers(names: list[str], per_head: bool = False) -> None:
    """Every name is a known method (and, for `eval.per_head_scorers`, one with a per-head variant)."""
    from omnimem_train.memory.registry import known_methods, per_head_scorers

    key = "eval.per_head_scorers" if per_head else "eval.scorers"
    known = per_head_scorers() if per_head else known_methods()
    for name in names:
        if name not in known:
            raise ConfigError(f"{key}: {'no per-head variant of' if per_head else 'unknown'} scorer {name!r}; "
                              f"known: {', '.join(known)}")


def select_samples(ecfg, err: TextIO = sys.stderr) -> list:
    """The first ceil(fraction x N) multiple-choice samples of the manifest's split."""
    from omnimem_train.data.manifest import read_manifest

    if ecfg.manifest is None:
        raise ConfigError("eval.manifest: not set; set eval.manifest=PATH (a manifest JSONL, e.g. from "
                          "`python -m data_prep.tiny_qa OUT --split test`)")
    if not Path(ecfg.manifest).exists():
        raise ConfigError(f"eval.manifest: {ecfg.manifest}: manifest not found")
    samples = read_manifest(ecfg.manifest, ecfg.split)
    if not samples:
        splits = sorted({s.split for s in read_manifest(ecfg.manifest)})
        raise ConfigError(f"eval.manifest: {ecfg.manifest} has no samples of split {ecfg.split!r} "
                          f"(it has: {', '.join(splits) or 'no samples'}); set eval.split=...")
    choice = [s for s in samples if s.options]
    if len(choice) < len(samples):
        print(f"note: skipping {len(samples) - len(choice)} open-ended samples (accuracy needs options)",
              file=err)
    if not choice:
        raise ConfigError(f"eval.manifest: {ecfg.manifest}: no multiple-choice samples in split {ecfg.split!r}")
    n = max(1, math.ceil(round(ecfg.fraction * len(choice), 9)))
    for key in ecfg.group_by:
        lacking = next((s for s in choice[:n] if key not in s.extra), None)
        if lacking is not None:
            raise ConfigError(f"eval.group_by: {ecfg.manifest}: sample {lacking.id!r} has no field {key!r}")
    return choice[:n]


def sample_groups(ecfg, sample) -> dict[str, str]:
    """{field: value} of `eval.group_by` for one sample (its prediction record's `groups`)."""
    return {k: str(sample.extra[k]) for k in ecfg.group_by}


def cell_config(cfg, cell: Cell):
    """The resolved config of one cell: memory.* set for it, eval.* narrowed to it."""
    profile = str(calibration_path(cfg)) if cell.allocation == "calibrated" else None
    mem = dataclasses.replace(cfg.memory, scorer=cell.scorer, budget=cell.budget,
                              budget_fraction=cell.budget_fraction, budget_file=profile, compression_ratio=None,
                              modality_aware=cell.allocation != "blind", per_head=cell.per_head)
    ev = dataclasses.replace(
        cfg.eval, scorers=[] if cell.is_full or cell.per_head else [cell.scorer],
        per_head_scorers=[cell.scorer] if cell.per_head else [],
        budgets=[] if cell.budget is None else [cell.budget],
        budget_fractions=[] if cell.budget_fraction is None else [cell.budget_fraction],
        allocations=[] if cell.allocation is None else [cell.allocation],
        budget_axis=cell.budget_axis)  # `full` has no budget: one cell serves both axes
    return dataclasses.replace(cfg, memory=mem, eval=ev)


def cell_policy(adapter, ccfg):
    """The memory policy of one cell (`ccfg`: its `cell_config`): as memory.* builds it, or, with
    eval.budget_axis: bytes, sized at the equal total bytes of the model's tokens."""
    from omnimem_train.memory.layer_memory import TokenShape
    from omnimem_train.memory.registry import build_policy

    shape = TokenShape.of_adapter(adapter) if ccfg.eval.budget_axis == "bytes" else None
    return build_policy(ccfg.memory, len(adapter.decoder_layers), equal_bytes=shape)


# ---------------------------------------------------------------------------------------------
# files


def _write_if_changed(path: Path, text: str) -> bool:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    atomic_write_text(path, text)
    return True


def _json(obj) -> str:
    return json.dumps(obj, indent=2) + "\n"


def cell_dir(cfg, cell: Cell) -> Path:
    return Path(cfg.output_dir) / CELLS_DIR / cell.name


def is_finished(cfg, cell: Cell, ids: list[str] | None = None) -> bool:
    """Whether `cell` is finished (see the module docstring) and, given `ids`, predicted exactly
    these samples, in this order."""
    d = cell_dir(cfg, cell)
    if not is_finished_run(cell_config(cfg, cell), d, [PREDICTIONS, METRICS], ignore=["output_dir"]):
        return False
    try:
        recorded = json.loads((d / METRICS).read_text(encoding="utf-8")).get("input_files")
        predicted = [r["id"] for r in read_predictions(d / PREDICTIONS)] if ids is not None else None
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return False
    return recorded == input_files(cfg, cell) and predicted == ids


def read_cells(output_dir: str | Path) -> dict[str, list[dict]]:
    """{cell name: prediction records} of every cell of an eval output folder that has a
    predictions.jsonl (`<output_dir>/cells/<cell>/predictions.jsonl`)."""
    root = Path(output_dir) / CELLS_DIR
    return {p.parent.name: read_predictions(p) for p in sorted(root.glob(f"*/{PREDICTIONS}"))}


def input_files(cfg, cell: Cell | None = None) -> dict[str, list[int]]:
    """{path: [size, mtime_ns]} of what a cell's results depend on beyond its config: the model's
    weights and config.json (a local model folder; hub ids and built-ins are fixed by their name),
    the manifest and, for a calibrated cell, the calibrated profile. A model retrained into the same
    folder changes them."""
    model = Path(cfg.model_name_or_path)
    paths = [Path(cfg.eval.manifest)]
    if model.is_dir():
        paths += sorted(model.glob("*.safetensors")) + [model / "config.json"]
    if cell is not None and cell.allocation == "calibrated":
        paths.append(calibration_path(cfg))
    files = {}
    for path in paths:
        if path.is_file():
            st = path.stat()
            files[str(path)] = [st.st_size, st.st_mtime_ns]
    return files


def read_predictions(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------------------------------------
# running


def run_cell(adapter, cfg, cell: Cell, samples: list, err: TextIO = sys.stderr, cache=None) -> dict:
    """Evaluate `samples` under `cell`; writes the cell folder (metrics.json last) and returns its metrics.
    `cache`: an `EncoderCache` shared by the cells (`eval.cache_streams`)."""
    import torch

    from omnimem_train.config import save_config
    from omnimem_train.streaming.engine import StreamingEngine
    from omnimem_train.streaming.infer import answer_question
    from omnimem_train.streaming.inputs import media_input
    from omnimem_train.utils.progress import progress

    ccfg = cell_config(cfg, cell)
    out = cell_dir(cfg, cell)
    inputs = input_files(cfg, cell)  # as read now: a model rewritten during the run leaves the cell unfinished
    (out / METRICS).unlink(missing_ok=True)  # an interrupted re-run must not look finished
    save_config(ccfg, out)
    torch.manual_seed(cfg.seed)  # each cell alike, whichever cells ran before it
    records = []
    for s in progress(samples, desc=f"eval {cell.name}", unit="sample", file=err, leave=False):
        t0 = time.perf_counter()
        try:
            media, est = media_input(adapter, cfg.media, video=s.video, audio=s.audio)
            # per sample: fresh policy state
            engine = StreamingEngine.from_config(adapter, ccfg.memory, policy=cell_policy(adapter, ccfg))
            policy = engine.policy
            with torch.no_grad():
                result = answer_question(engine, media, s.question, s.options, cfg.generation.system_prompt,
                                         cfg.generation.max_new_tokens,
                                         answer_format=cfg.generation.answer_format,
                                         cache=cache, cache_key=(s.video, s.audio))
        except MediaError as e:
            raise MediaError(f"sample {s.id!r}: {e}") from e
        seconds = time.perf_counter() - t0
        budgets = getattr(policy, "budgets", None)
        budget = budgets.mean_total() if budgets is not None else None
        rec = {
            "id": s.id, "question_type": s.question_type, "answer": s.answer, "choice": result.choice,
            "correct": result.choice == s.answer, "option_scores": [float(x) for x in result.option_scores],
            "budget": budget, "expected_tokens": int(est), "tokens_seen": result.report.tokens_seen,
            "retained_kv_bytes": int(result.report.kv_bytes), "retained_total_bytes": int(result.report.total_bytes),
            "retained_media_tokens": result.report.mean("visual") + result.report.mean("audio"),
            "stream_seconds": result.stream_seconds, "seconds": seconds,
            **({"groups": sample_groups(cfg.eval, s)} if cfg.eval.group_by else {}),
        }
        records.append(rec)
    atomic_write_text(out / PREDICTIONS, "".join(json.dumps(r) + "\n" for r in records))
    kept = [r["retained_media_tokens"] for r in records]
    budgets = [r["budget"] for r in records if r["budget"] is not None]
    metrics = {**cell.identity(), **compute_metrics(records),
               # tokens the budget allowed and the tokens kept, per layer (at equal bytes: fewer for a
               # method with per-token state)
               "budget_tokens_mean": sum(budgets) / len(budgets) if budgets else None,
               "retained_media_tokens_mean": sum(kept) / len(kept) if kept else 0.0,
               "model": cfg.model_name_or_path,
               "manifest": cfg.eval.manifest, "split": cfg.eval.split, "input_files": inputs}
    atomic_write_text(out / METRICS, _json(metrics))
    return metrics


def _fmt_bytes(n: float) -> str:
    return f"{n / 2**20:.3f}"


def kept_str(row: dict) -> str:
    """A summary row's audio+visual tokens kept per layer (mean over layers and samples); "-" for
    metrics written before it was recorded."""
    kept = row.get("retained_media_tokens_mean")
    return "-" if kept is None else f"{kept:.1f}"


def format_table(rows: list[dict]) -> str:
    """scorer | budget | allocation | accuracy [95% CI] | n | kept | KV MiB | total MiB | samples/s, one
    line per cell. kept: audio+visual tokens retained per layer; total: KV + extra state (the method's
    per-token state, e.g. hidden states or running attention, and the bookkeeping), per sample."""
    w = max([12, *(len(r["scorer"]) for r in rows)])
    wb = max([8, *(len(budget_str(r)) for r in rows)])
    head = (f"{'scorer':<{w}} {'budget':>{wb}} {'allocation':<10} {'accuracy [95% CI]':<22} {'n':>5} {'kept':>7} "
            f"{'KV MiB':>8} {'total MiB':>9} {'samples/s':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['scorer']:<{w}} {budget_str(r):>{wb}} {r.get('allocation') or '-':<10} "
                     f"{accuracy_str(r):<22} {r['n']:>5} {kept_str(r):>7} {_fmt_bytes(r['kv_bytes_mean']):>8} "
                     f"{_fmt_bytes(r['total_bytes_mean']):>9} {r['samples_per_s']:>9.2f}")
    return "\n".join(lines)


def format_markdown(rows: list[dict]) -> str:
    """The summary as a Markdown table: accuracy [95% CI] overall and per question type, tokens kept
    per layer, memory (KV, and total = KV + extra state)."""
    types = sorted({t for r in rows for t in r.get("per_type", {})})
    head = ["scorer", "budget", "allocation", "accuracy [95% CI]", *types, "n", "kept", "KV MiB", "total MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        per = [f"{r['per_type'][t]['accuracy']:.2f}" if t in r.get("per_type", {}) else "-" for t in types]
        cells = [r["scorer"], budget_str(r), r.get("allocation") or "-", accuracy_str(r), *per, str(r["n"]),
                 kept_str(r), _fmt_bytes(r["kv_bytes_mean"]), _fmt_bytes(r["total_bytes_mean"])]
        lines.append("| " + " | ".join(cells) + " |")
    for key in dict.fromkeys(k for r in rows for k in r.get("per_group", {})):
        values = list(dict.fromkeys(v for r in rows for v in r.get("per_group", {}).get(key, {})))
        lines += ["", f"Accuracy [95% CI] per `{key}`:", "",
                  "| cell | " + " | ".join(values) + " |", "|" + "---|" * (len(values) + 1)]
        for r in rows:
            per = r.get("per_group", {}).get(key, {})
            lines.append(f"| {r['cell']} | " + " | ".join(accuracy_str(per[v]) + f" (n {per[v]['n']})" if v in per
                                                         else "-" for v in values) + " |")
    return "\n".join(lines) + "\n"


def budget_str(row: dict) -> str:
    """A summary row's budget: "-" (full), "64" (absolute) or "0.0625x" (a fraction of the stream);
    "64@bytes" at equal total bytes (eval.budget_axis: bytes)."""
    if row["scorer"] == "full":
        return "-"
    size = str(row["budget"]) if row.get("budget") is not None else f"{row['budget_fraction']:g}x"
    return size + ("@bytes" if row.get("budget_axis") == "bytes" else "")


def accuracy_str(row: dict) -> str:
    return f"{row['accuracy']:.3f} [{row['ci'][0]:.3f}, {row['ci'][1]:.3f}]"


METHOD = ("omnimem", "calibrated")  # OmniMem, the method: calibrated allocation + the omnimem score


def comparison_pairs(rows: list[dict]) -> list[tuple[str, str]]:
    """The paired comparisons a grid reports, per budget: OmniMem (calibrated + omnimem) against
    full memory and against every other cell of that budget (the baselines, under every allocation),
    and the 2x2 decomposition {uniform, calibrated} x {novelty, omnimem}: which component helps."""
    by_size: dict[str, dict[tuple[str, str], str]] = {}
    for r in rows:
        if r["scorer"] != "full":
            by_size.setdefault(budget_str(r), {})[(r["scorer"], r["allocation"])] = r["cell"]
    pairs = []
    for cells in by_size.values():
        method = cells.get(METHOD)
        if method is not None:
            pairs.append(("full", method))
            pairs += [(method, other) for key, other in cells.items() if key != METHOD]
        for a, b in ((("omnimem", "calibrated"), ("omnimem", "uniform")),
                     (("novelty", "calibrated"), ("novelty", "uniform")),
                     (("omnimem", "calibrated"), ("novelty", "calibrated")),
                     (("omnimem", "uniform"), ("novelty", "uniform"))):
            if a in cells and b in cells and (cells[a], cells[b]) not in pairs:
                pairs.append((cells[a], cells[b]))
    return pairs


def run_eval(cfg, out: TextIO | None = None, err: TextIO | None = None) -> dict:
    """Run every unfinished cell of `cfg.eval`'s grid (model loaded once, only if needed; the
    calibrated profile measured first when a calibrated cell needs it), then write summary.json,
    summary.md and the plot. Every cell evaluates the same samples: the selected ones whose media
    pass `media.decode.check_sources`, checked before the model loads (`data.on_bad_sample`).
    Returns the summary: {"model", "manifest", "split", "samples", "skipped", "cells": [metrics of
    every cell, grid order], "comparisons": [paired rows], "summary", "plot", "predictions": {cell
    name: its prediction records}} (predictions are not written to summary.json)."""
    from omnimem_train.config import save_config
    from omnimem_train.data.probe import probe_samples
    from omnimem_train.eval.paired import compare_cells, format_comparisons
    from omnimem_train.eval.plots import plot_accuracy_vs_budget
    from omnimem_train.media.decode import check_sources

    out = out or sys.stdout
    err = err or sys.stderr
    check_scorers(cfg.eval.scorers)
    check_scorers(cfg.eval.per_head_scorers, per_head=True)
    selected = select_samples(cfg.eval, err)
    cells = grid_cells(cfg.eval)
    if any(c.allocation == "calibrated" for c in cells) and cfg.eval.calibration_profile is None:
        calibration_inputs(cfg.eval)  # fail before any model is loaded when the train split is missing
    # Every cell runs on the same samples, those whose media are readable (data.on_bad_sample).
    samples = probe_samples(selected, cfg.eval.manifest, partial(check_sources, audio_mode=cfg.media.audio),
                            cfg.data.on_bad_sample, cfg.output_dir, err)
    ids = [s.id for s in samples]
    run_dir = Path(cfg.output_dir)
    todo = []
    for cell in cells:
        if is_finished(cfg, cell, ids):
            print(f"skip {cell.name} (finished: {cell_dir(cfg, cell) / METRICS})", file=out, flush=True)
        else:
            todo.append(cell)
    adapter = _load_model(cfg) if todo else None
    if not same_config(cfg, run_dir):
        save_config(cfg, run_dir)
    if any(c.allocation == "calibrated" for c in todo):
        calibrate_profile(adapter, cfg, input_files(cfg), err)
    if todo:
        print(f"evaluating {len(todo)} of {len(cells)} cells on {len(samples)} samples of "
              f"{cfg.eval.manifest} ({cfg.eval.split})", file=err, flush=True)
        cache = None
        if cfg.eval.cache_streams:
            from omnimem_train.streaming.encoder_cache import EncoderCache

            cache = EncoderCache(adapter)
        for cell in todo:
            m = run_cell(adapter, cfg, cell, samples, err, cache)
            print(f"{cell.name}: accuracy {m['accuracy']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}] "
                  f"({m['correct']}/{m['n']}), {kept_str(m)} tokens kept/layer, KV {_fmt_bytes(m['kv_bytes_mean'])} "
                  f"MiB, total {_fmt_bytes(m['total_bytes_mean'])} MiB, "
                  f"{m['samples_per_s']:.2f} samples/s", file=out, flush=True)
    rows = [json.loads((cell_dir(cfg, c) / METRICS).read_text(encoding="utf-8")) for c in cells]
    predictions = {c.name: read_predictions(cell_dir(cfg, c) / PREDICTIONS) for c in cells}
    comparisons = compare_cells(predictions, comparison_pairs(rows), seed=cfg.seed)
    summary = {"model": cfg.model_name_or_path, "manifest": cfg.eval.manifest, "split": cfg.eval.split,
               "samples": len(samples), "skipped": len(selected) - len(samples), "cells": rows,
               "comparisons": comparisons}
    summary_path, plot_path = run_dir / SUMMARY, run_dir / PLOT
    changed = _write_if_changed(summary_path, _json(summary))
    markdown = format_markdown(rows)
    if comparisons:
        markdown += "\n## Paired comparisons (same clips; bootstrap 95% CI of the accuracy difference)\n\n"
        markdown += format_comparisons(comparisons)
    _write_if_changed(run_dir / "summary.md", markdown)
    if changed or not plot_path.is_file():
        manifest = Path(cfg.eval.manifest)
        title = (f"{cfg.model_name_or_path} on {manifest.parent.name}/{manifest.name} ({cfg.eval.split}, "
                 f"{len(samples)} samples)")
        plot_accuracy_vs_budget(rows, plot_path, title)
    return {**summary, "summary": str(summary_path), "plot": str(plot_path), "predictions": predictions}


def _load_model(cfg):
    from omnimem_train.models.load import load_configured_adapter

    adapter = load_configured_adapter(cfg)
    if not adapter.takes_media:
        raise ConfigError(f"model_name_or_path: {cfg.model_name_or_path} is a text-only LM; the manifest's "
                          "video/audio samples need an audio-visual model")
    return adapter


__all__ = ["Cell", "PREDICTION_FIELDS", "cell_config", "cell_policy", "check_scorers", "comparison_pairs",
           "format_markdown", "format_table", "grid_cells", "input_files", "is_finished", "read_cells", "read_predictions", "run_cell",
           "run_eval", "select_samples"]
