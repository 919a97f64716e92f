"""`omnimem-train calibrate RECIPE.yaml [key=value ...]`: per-layer audio/visual budgets (METHOD §4).

Streams `calibration.inputs` (or `calibration.num_samples` generated synthetic clips) through the
model without compression, measures per-layer, per-modality attention entropy and adjacent-token
similarity (`memory.calibrate.CalibrationCollector`), allocates `calibration.total` audio+visual
tokens over the layers with T = memory.temperature and ρ = memory.rho, and writes the budget JSON
(usable as memory.budget_file), a PNG plot next to it and the resolved config.yaml in output_dir.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omnimem_train.errors import ConfigError
from omnimem_train.eval.calibration import media_args, run_calibration


def _synthetic_clips(cfg, run_dir: Path) -> list[str]:
    """`num_samples` different clips (seed i, tone 220-1045 Hz) under <output_dir>/calibration_clips."""
    from data_prep.synthetic import write_clip

    out = []
    for i in range(cfg.calibration.num_samples):
        path = run_dir / "calibration_clips" / f"clip_{i}_{cfg.calibration.clip_seconds:g}s.mp4"
        if not path.exists():
            write_clip(path, seconds=cfg.calibration.clip_seconds, width=112, height=112, fps=8,
                       tone_hz=220.0 * (1 + 0.25 * (i % 16)), seed=cfg.seed + i)
        out.append(str(path))
    return out


def _check_total(cfg) -> None:
    if cfg.calibration.total is None and cfg.memory.budget is None:
        raise ConfigError("calibration.total: not set and memory.budget is null; set calibration.total=N "
                          "(audio+visual tokens over all layers) or memory.budget=N (per layer)")


def _total(cfg, n_layers: int) -> int:
    _check_total(cfg)
    return cfg.calibration.total if cfg.calibration.total is not None else cfg.memory.budget * n_layers


def _fmt(x: float | None, width: int = 7) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.3f}"


def format_table(stats, scores, layers) -> str:
    """One line per layer: E and c by modality, g_all, the layer's share and its [audio, visual]."""
    head = (f"{'layer':>5} {'E_aud':>7} {'E_vis':>7} {'E_all':>7} {'c_aud':>7} {'c_vis':>7} {'c_all':>7} "
            f"{'g_all':>7} {'audio':>7} {'visual':>7} {'total':>7}")
    lines = [head]
    for i, (a, v) in enumerate(layers):
        e, c = stats.entropy, stats.cosine
        lines.append(f"{i:>5} {_fmt(e['audio'][i])} {_fmt(e['visual'][i])} {_fmt(e['all'][i])} "
                     f"{_fmt(c['audio'][i])} {_fmt(c['visual'][i])} {_fmt(c['all'][i])} {_fmt(scores[i]['all'])} "
                     f"{a:>7} {v:>7} {a + v:>7}")
    sa, sv = sum(a for a, _ in layers), sum(v for _, v in layers)
    lines.append(f"{'sum':>5} {'':>55} {sa:>7} {sv:>7} {sa + sv:>7}")
    return "\n".join(lines)


def explain_stats(stats) -> str:
    """What the table's numbers are, and why every entropy may read 1.000."""
    text = ("E: attention entropy over the modality's keys a query sees, divided by log(their number), so "
            "1 = attention spread evenly over them and 0 = all on one key; c: cosine similarity of adjacent "
            "tokens' hidden states; g_all = E_all * sqrt(1 - (c_aud + c_vis) / 2) sets each layer's share of "
            "the total (softmax over layers at temperature T)")
    measured = [e for m in ("audio", "visual", "all") for e in stats.entropy[m] if e is not None]
    if measured and min(measured) >= 0.9995:  # every entry prints as 1.000
        text += ("\nevery E reads 1.000: attention is near uniform over the stream, as with random (untrained) "
                 "weights such as the built-in tiny models', so only c shapes the allocation")
    return text


def budget_warning(stats, layers, total: int) -> str | None:
    """One line when `total` is more audio+visual tokens than the layers hold of an average
    calibration stream: used as absolute budgets the file would keep most or all of such a stream.
    (As a profile for memory.budget / memory.budget_fraction only its shape counts.)"""
    if not stats.samples:
        return None
    audio, visual = (stats.tokens.get(m, 0) / stats.samples for m in ("audio", "visual"))
    per_layer = audio + visual
    held = per_layer * len(layers)
    if held <= 0 or total <= held:
        return None
    filled = sum(min(a, audio) + min(v, visual) for a, v in layers)  # what such a stream puts in them
    varies = " on average" if stats.tokens.get("audio", 0) % stats.samples or \
        stats.tokens.get("visual", 0) % stats.samples else ""
    return (f"warning: calibration.total={total} exceeds the {held:.0f} audio+visual tokens a calibration stream "
            f"holds over the {len(layers)} layers ({per_layer:.0f} per layer{varies}): as absolute budgets "
            f"(memory.budget_file alone) {total - filled:.0f} of the {total} stay unused on such a stream, which "
            f"keeps {filled / held:.0%} of its tokens; ask for a total below {held:.0f} (as a profile for "
            "memory.budget / memory.budget_fraction only the file's shape counts)")


def cmd_calibrate(args) -> int:
    from omnimem_train.config import load_config, save_config
    from omnimem_train.models.load import load_configured_adapter
    from omnimem_train.utils.paths import check_writable_dir

    cfg = load_config(args.recipe, args.overrides)
    run_dir = Path(cfg.output_dir)
    output = Path(cfg.calibration.output) if cfg.calibration.output else run_dir / "budgets.json"
    # before loading the model: fail fast
    check_writable_dir(run_dir)
    if cfg.calibration.output:
        check_writable_dir(output.parent, "calibration.output")
    _check_total(cfg)
    adapter = load_configured_adapter(cfg)
    n_layers = len(adapter.decoder_layers)
    total = _total(cfg, n_layers)
    inputs = list(cfg.calibration.inputs)
    media_inputs = [p for p in inputs if "context" not in media_args(p)]
    if media_inputs and not adapter.takes_media:
        raise ConfigError(f"calibration.inputs: {media_inputs[0]}: {cfg.model_name_or_path} is a text-only LM; "
                          "it takes text-proxy context files (.txt) only")
    if not inputs:
        if not adapter.takes_media:
            raise ConfigError(f"calibration.inputs: empty, and {cfg.model_name_or_path} is a text-only LM; "
                              "synthetic clips need an audio-visual model, give text-proxy context files (.txt)")
        inputs = _synthetic_clips(cfg, run_dir)
        print(f"note: calibration.inputs is empty; streaming {len(inputs)} generated "
              f"{cfg.calibration.clip_seconds:g}-s clips", file=sys.stderr)
    save_config(cfg, run_dir)
    layers, stats, scores = run_calibration(adapter, cfg, inputs, output, total)
    print(format_table(stats, scores, layers))
    print(explain_stats(stats))
    warning = budget_warning(stats, layers, total)
    if warning:
        print(warning, file=sys.stderr)
    print(f"budgets: {output}  (use it with memory.budget_file={output}: absolute budgets, or with memory.budget / "
          "memory.budget_fraction the per-layer profile at that size)")
    print(f"plot:    {output.with_suffix('.png')}")
    print(f"config:  {run_dir / 'config.yaml'}")
    return 0


def add_parser(sub) -> None:
    """Register `calibrate` on the `omnimem-train` subparsers."""
    p = sub.add_parser("calibrate", help="measure per-layer attention entropy/similarity on uncompressed runs "
                                         "and write a per-layer audio/visual budget file (METHOD section 4)")
    p.add_argument("recipe", nargs="?", help="recipe YAML (e.g. recipes/calibrate/tiny_omni.yaml)")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. calibration.total=4096)")
    p.set_defaults(func=cmd_calibrate)
