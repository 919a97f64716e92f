"""Training-step benchmark: budget-aware streaming training vs plain full-context (`compression: none`).

Run (from the repository root, with the project's venv):

    python benchmarks/train_step.py                   # budget 256, lengths 1x 4x 8x the budget (~45 s on 2 CPU cores)
    python benchmarks/train_step.py --quick           # budget 128, 2 timed steps (~35 s)
    python benchmarks/train_step.py --with-none-ckpt  # also compression=none with gradient checkpointing
    python benchmarks/train_step.py --out checkpoints/train_step.md   # also write the table as markdown
    python benchmarks/train_step.py --grad-groups 2   # also budget mode with memory_grad_groups=2; lengths 1x 4x 16x

What it does: for each length multiple m it writes a real H.264+AAC mp4 (`data_prep.synthetic.write_clip`,
112x112, a coloured square moving over a gradient) long enough that the stream holds about m x budget
audio+visual tokens (112x112 at 2 fps: 16 visual + 25 audio tokens/s). Every (length, mode) case trains
on that same clip with the question "What colour is the square?" (four colour options, target "A. red")
in its own fresh subprocess (this script with a hidden `--worker` flag), so peak memory is per case.

A worker loads `recipes/train/tiny_cpu.yaml` with overrides (`omnimem_train.config.load_config`):
`builtin:tiny-omni` (random-weight Qwen2.5-Omni thinker), LoRA r=8 on q/k/v, float32, CPU, and builds
the training module exactly as `omnimem-train train` does (`omnimem_train.train.run.build_objective`).
The modes:

- `budget`: `compression=streaming`, `memory.scorer=omnimem`, `memory.budget=B`, groups of
  `--group-size` stream tokens, `gradient_checkpointing=true` (the recipe's default);
- `none`: `compression=none` (one group holding the whole stream, nothing evicted) *without*
  gradient checkpointing: plain full-context training, the baseline of both targets;
- `none+ckpt` (`--with-none-ckpt`): `compression=none` with `gradient_checkpointing=true`. With one
  group, per-group checkpointing recomputes the whole stream in backward, so it saves little;
- `budget k=K` (`--grad-groups K`): `budget` with `memory_grad_groups=K`: gradients through the retained
  memory reach only the stream's last K groups, the older groups run without autograd. `budget` itself
  is the exact path (`memory_grad_groups=all`). With `--grad-groups`, the default lengths are 1x, 4x
  and 16x the budget, and the script also prints, for `budget k=K` and `budget`, how the step's memory
  at the longest length compares with the shortest: peak(hi x)/peak(lo x) of the step's own peak
  (VmHWM reset, below) and of the whole worker's peak RSS. Target: the step-peak ratio <= 1.2 for
  `budget k=K`. For reference it also runs, per length, a `decode+encoders` worker: the same load and
  throwaway step, then only the steps' media part (`media_input` + `adapter.stream` under no_grad, as
  many times as a case steps), whose peak is measured the same way: the part of a step's peak that
  any training mode pays and that no memory setting changes.

One step = `objective([example])` (decode the mp4 through the media path, frozen encoders without
autograd, the grouped decoder forward, the answer loss) + backward + `torch.optim.AdamW.step` on the
trainable (LoRA) parameters. Per case, after loading the model and creating the optimizer:

1. one throwaway step on a 2-s clip (lazy imports, kernel/allocator setup, AdamW state): the
   "after load" RSS is `ru_maxrss` read after it;
2. one warm-up step on the case's clip (not timed);
3. `--steps` timed steps (default 3); step time = their median (the targets use it; the minimum is
   shown too, the better estimate when other jobs share the CPU).

Workers use one torch intra-op thread by default (`--threads`; 0 = torch's default): on a shared
2-vCPU VM, two threads per worker gave occasional 10-50x slower steps whenever another job ran.

Peak RSS is the worker's `ru_maxrss` at its end (so it includes loading). "step peak above base" is
the kernel's own peak counter (`/proc/self/status` VmHWM) reset (`/proc/self/clear_refs` = 5) right
before the warm-up step and read after the timed steps, minus the RSS at the reset: the memory the
training steps themselves added. Also reported: the wall time of decoding the stream and running the
encoders alone (`media_input` + `adapter.stream` under no_grad, median of `--steps` runs per case), the audio+visual tokens left in the
engine's memory per layer after the stream and that memory's bytes (`state.report()`, via
`objective.last_reports`).

Targets: at 8x the budget (the longest length run), (1) budget-aware peak memory < full-context peak memory, and
(2) budget-aware step time <= 1.5 x full-context step time at 1x. This script is a report: it prints
PASS/FAIL for both and exits 0 unless a case crashes (`--strict`: exit 1 when a target is missed).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _isolation import REPO, proc_status, repo_on_path, reset_hwm, rss_mib, spawn, worker_main  # noqa: E402

RECIPE = REPO / "recipes" / "train" / "tiny_cpu.yaml"
AUDIO_TOKENS_PER_S = 25  # Qwen2.5-Omni audio tower: 100 mel frames/s, stride 4 overall
SAMPLE_FPS = 2.0  # frames/s fed to the vision tower
MIN_PIXELS = 56 * 56
QUESTION = "What colour is the square?"
OPTIONS = ["red", "green", "blue", "yellow"]
ANSWER = "A. red"
STEP_TIME_FACTOR = 1.5
FLAT_RATIO = 1.2  # --grad-groups: step peak at the longest length / at the shortest, budget k=K
MODES = {  # mode -> config overrides on top of the common ones
    "budget": ["compression=streaming", "gradient_checkpointing=true"],
    "none": ["compression=none", "gradient_checkpointing=false"],
    "none+ckpt": ["compression=none", "gradient_checkpointing=true"],
    "decode+encoders": ["compression=streaming", "gradient_checkpointing=true"],  # no training step: see run_case
}






def clip_seconds(multiple: int, budget: int, width: int, height: int) -> int:
    """multiple x the whole seconds whose audio+visual tokens first reach the budget (a frame that is
    already a multiple of 28 keeps its size: (w/28)(h/28) visual tokens per 2-frame patch = per s)."""
    rate = (width // 28) * (height // 28) * SAMPLE_FPS / 2 + AUDIO_TOKENS_PER_S
    return multiple * max(1, math.ceil(budget / rate))


# --- worker: one (clip, mode) case in a fresh process -------------------------------------------------
def run_case(clip: str, warm_clip: str, mode: str, budget: int, group_size: int, width: int, height: int,
             steps: int, threads: int | None = None, grad_groups: int | None = None) -> dict:
    rss_start = rss_mib()
    import torch

    if threads:
        torch.set_num_threads(threads)

    from omnimem_train.config import load_config
    from omnimem_train.models.prompt import split_chat_prompt
    from omnimem_train.streaming.inputs import media_input
    from omnimem_train.train.objective import Example
    from omnimem_train.train.run import build_objective

    overrides = [
        "device=cpu", "dtype=float32", "lora_dropout=0.0", "report_to=none", "media.audio=required",
        f"media.max_pixels={width * height}", f"media.min_pixels={MIN_PIXELS}", f"media.video_fps={SAMPLE_FPS}",
        "memory.scorer=omnimem", f"memory.budget={budget}", f"memory.group_size={group_size}",
        *MODES[mode], *([f"memory_grad_groups={grad_groups}"] if grad_groups is not None else []),
    ]
    cfg = load_config(RECIPE, overrides)
    torch.manual_seed(cfg.seed)
    objective, adapter = build_objective(cfg)
    objective.train()
    params = [p for p in objective.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    def example(path: str) -> Example:
        return Example(video=path, audio=None, question=QUESTION, options=OPTIONS, answer=ANSWER)

    def step(ex: Example) -> float:
        opt.zero_grad(set_to_none=True)
        loss = objective([ex])
        loss.backward()
        opt.step()
        return float(loss)

    prefix, _ = split_chat_prompt(adapter.tokenizer, cfg.generation.system_prompt, QUESTION)

    def media_pass(path: str) -> int:
        """Decoding + encoders alone (what any training mode pays before the decoder sees a token)."""
        with torch.no_grad():
            media, _ = media_input(adapter, cfg.media, path)
            return sum(int((p.modality != 0).sum()) for p in adapter.stream(media, prefix))

    step(example(warm_clip))  # one-time setup on a short clip
    rss_loaded = rss_mib()
    rss_base = proc_status("VmRSS")
    hwm_reset = reset_hwm()
    if mode == "decode+encoders":  # the steps' media part alone, as many times as a case steps
        for _ in range(steps + 1):
            media_pass(clip)
        step_hwm = proc_status("VmHWM") if hwm_reset else None
        return {"mode": mode, "rss_loaded_mib": rss_loaded, "rss_base_mib": rss_base, "rss_peak_mib": rss_mib(),
                "step_hwm_mib": step_hwm}
    ex = example(clip)
    losses = [step(ex)]  # warm-up on the case's clip
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        losses.append(step(ex))
        times.append(time.perf_counter() - t0)
    step_hwm = proc_status("VmHWM") if hwm_reset else None
    rep = objective.last_reports[0]

    media_times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        media_tokens = media_pass(clip)
        media_times.append(time.perf_counter() - t0)
    return {
        "mode": mode if grad_groups is None else f"{mode} k={grad_groups}",
        "seconds": media_input(adapter, cfg.media, clip)[0].duration_s,
        "stream_tokens": rep.tokens_seen,
        "media_tokens": media_tokens,
        "groups": math.ceil(rep.tokens_seen / group_size) if mode == "budget" else 1,
        "kept_media_per_layer": rep.mean("visual") + rep.mean("audio"),
        "kv_bytes": rep.kv_bytes,
        "engine_bytes": rep.total_bytes,
        "step_s": statistics.median(times),
        "all_step_s": times,
        "media_s": statistics.median(media_times),
        "losses": losses,
        "rss_start_mib": rss_start,
        "rss_loaded_mib": rss_loaded,
        "rss_base_mib": rss_base,
        "rss_peak_mib": rss_mib(),
        "vm_hwm_mib": proc_status("VmHWM"),
        "step_hwm_mib": step_hwm,
        "trainable": sum(p.numel() for p in params),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }



# --- driver (never imports torch: Linux carries ru_maxrss across exec into the workers) ---------------

def _above(r: dict) -> float:
    return r["rss_peak_mib"] - r["rss_loaded_mib"]


def _step_above(r: dict) -> float | None:
    return None if r["step_hwm_mib"] is None else r["step_hwm_mib"] - r["rss_base_mib"]


def format_table(rows: list[dict]) -> str:
    head = ("| length | clip s | stream tokens | mode | step s (median) | step s (min) | decode+encoders s | "
            "kept A+V tokens/layer | engine memory after stream KiB | peak RSS MiB | RSS above after-load MiB | "
            "step peak above base MiB |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        sa = _step_above(r)
        out.append(
            f"| {r['multiple']}× | {r['seconds']:.0f} | {r['stream_tokens']:,} | {r['mode']} | {r['step_s']:.2f} | {min(r['all_step_s']):.2f} | "
            f"{r['media_s']:.2f} | {r['kept_media_per_layer']:.0f} | {r['engine_bytes'] / 1024:,.0f} | "
            f"{r['rss_peak_mib']:.0f} | {_above(r):.0f} | {'n/a' if sa is None else f'{sa:.0f}'} |"
        )
    return "\n".join(out)


def checks(rows: list[dict], lo: int, hi: int) -> tuple[list[str], bool]:
    by = {(r["multiple"], r["mode"]): r for r in rows}
    b, n, n_lo = by[(hi, "budget")], by[(hi, "none")], by[(lo, "none")]
    lines = []
    ok_peak = b["rss_peak_mib"] < n["rss_peak_mib"]
    ok_above = _above(b) < _above(n)
    lines.append(f"target 1 @ {hi}×: budget peak RSS {b['rss_peak_mib']:.0f} MiB {'<' if ok_peak else '>='} "
                 f"none {n['rss_peak_mib']:.0f} MiB: {'PASS' if ok_peak else 'FAIL'}")
    lines.append(f"           RSS above after-load: budget {_above(b):.0f} MiB {'<' if ok_above else '>='} "
                 f"none {_above(n):.0f} MiB: {'PASS' if ok_above else 'FAIL'}")
    sb, sn = _step_above(b), _step_above(n)
    if sb is not None and sn is not None:
        lines.append(f"           step peak above base (VmHWM reset): budget {sb:.0f} MiB vs none {sn:.0f} MiB")
    if lo == hi:
        lines.append("target 2: n/a (needs two length multiples)")
        return lines, ok_peak
    limit = STEP_TIME_FACTOR * n_lo["step_s"]
    ok_time = b["step_s"] <= limit
    lines.append(f"target 2: budget step @ {hi}× {b['step_s']:.2f} s {'<=' if ok_time else '>'} {STEP_TIME_FACTOR} × "
                 f"none step @ {lo}× ({n_lo['step_s']:.2f} s) = {limit:.2f} s: {'PASS' if ok_time else 'FAIL'} "
                 f"(ratio {b['step_s'] / n_lo['step_s']:.2f})")
    lines.append(f"           for reference: budget @ {hi}× / none @ {hi}× step time = {b['step_s'] / n['step_s']:.2f}; "
                 f"decode+encoders alone @ {hi}× {b['media_s']:.2f} s vs @ {lo}× {n_lo['media_s']:.2f} s")
    return lines, ok_peak and ok_time


def flatness(rows: list[dict], lo: int, hi: int, k: int) -> tuple[list[str], bool]:
    """peak(hi x)/peak(lo x) for `budget k=K`, `budget` (the exact path) and `decode+encoders` (the
    steps' media part alone): the step's own peak (VmHWM reset) and the worker's peak RSS."""
    by = {(r["multiple"], r["mode"]): r for r in rows}
    lines, ok = [], False
    for mode in (f"budget k={k}", "budget", "decode+encoders"):
        a, b = by[(lo, mode)], by[(hi, mode)]
        sa, sb = _step_above(a), _step_above(b)
        step = "n/a" if sa is None or sb is None else f"{sb / sa:.2f} ({sb:.0f} / {sa:.0f} MiB)"
        lines.append(f"memory vs length, {mode:>15}: step peak above base {hi}×/{lo}× = {step}; "
                     f"peak RSS {hi}×/{lo}× = {b['rss_peak_mib'] / a['rss_peak_mib']:.2f} "
                     f"({b['rss_peak_mib']:.0f} / {a['rss_peak_mib']:.0f} MiB)")
        if mode == f"budget k={k}":
            ok = sa is not None and sb is not None and sb / sa <= FLAT_RATIO
            lines.append(f"target 3: step peak above base {hi}×/{lo}× for budget k={k} "
                         f"{'<=' if ok else '>'} {FLAT_RATIO}: {'PASS' if ok else 'FAIL'}")
    # What the training adds over the media part's own peak, per length (MiB; a difference of two peaks).
    multiples = sorted({r["multiple"] for r in rows})
    for mode in (f"budget k={k}", "budget"):
        diffs = [(m, by.get((m, mode)), by.get((m, "decode+encoders"))) for m in multiples]
        text = ", ".join(f"{m}× {_step_above(a) - _step_above(d):+.0f}" for m, a, d in diffs
                         if a is not None and d is not None and _step_above(a) is not None and _step_above(d) is not None)
        lines.append(f"step peak minus decode+encoders peak, {mode:>10}: {text} MiB")
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=int, default=None, help="audio+visual tokens kept per layer (default 256, 128 with --quick)")
    p.add_argument("--multiples", type=int, nargs="+", default=None,
                   help="stream lengths as multiples of the budget (default 1 4 8; 1 4 16 with --grad-groups)")
    p.add_argument("--group-size", type=int, default=None, help="budget mode: stream tokens per group (default budget/2)")
    p.add_argument("--width", type=int, default=112, help="clip width (a multiple of 28)")
    p.add_argument("--height", type=int, default=112, help="clip height (a multiple of 28)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per case (default 3, 2 with --quick)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads per worker (default 1: stable timings on a shared 2-vCPU VM; 0: torch's default)")
    p.add_argument("--with-none-ckpt", action="store_true", help="also run compression=none with gradient checkpointing")
    p.add_argument("--grad-groups", type=int, default=None,
                   help="also run budget mode with memory_grad_groups=K and compare its memory at the longest "
                        "and shortest lengths with the exact path's")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown table and checks here")
    p.add_argument("--quick", action="store_true", help="budget 128, 2 timed steps")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker_main(args.worker, run_case)
        return 0
    repo_on_path()
    from data_prep.synthetic import write_clip

    budget = args.budget if args.budget is not None else (128 if args.quick else 256)
    group_size = args.group_size if args.group_size is not None else max(1, budget // 2)
    steps = args.steps if args.steps is not None else (2 if args.quick else 3)
    multiples = sorted(set(args.multiples or ([1, 4, 16] if args.grad_groups is not None else [1, 4, 8])))
    if budget < 1 or multiples[0] < 1 or steps < 1 or group_size < 1 or args.threads < 0:
        p.error("--budget, --multiples, --steps and --group-size must be >= 1, --threads >= 0")
    if args.grad_groups is not None and args.grad_groups < 1:
        p.error("--grad-groups must be >= 1")
    if args.width % 28 or args.height % 28:
        p.error("--width/--height must be multiples of 28 (frames keep their size; token counts stay exact)")
    # (mode, memory_grad_groups or None for all)
    modes = ([("budget", args.grad_groups)] if args.grad_groups is not None else []) + [("budget", None), ("none", None)]
    modes += [("none+ckpt", None)] if args.with_none_ckpt else []
    modes += [("decode+encoders", None)] if args.grad_groups is not None else []
    rate = (args.width // 28) * (args.height // 28) + AUDIO_TOKENS_PER_S
    print(f"tiny-omni LoRA training on CPU (fp32), budget {budget} audio+visual tokens/layer (omnimem), "
          f"group {group_size}, {args.width}x{args.height} @ {SAMPLE_FPS:g} fps -> {rate} media tokens/s, "
          f"{steps} timed steps/case; python {platform.python_version()}, {os.cpu_count()} CPUs", flush=True)

    rows, media_rows = [], []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="train_step_") as tmp:
        warm = write_clip(Path(tmp) / "warm.mp4", 2, args.width, args.height, 8, seed=99)
        for m in multiples:
            seconds = clip_seconds(m, budget, args.width, args.height)
            clip = write_clip(Path(tmp) / f"clip_{m}x.mp4", seconds, args.width, args.height, 8, seed=m)
            for mode, k in modes:
                case = dict(clip=str(clip), warm_clip=str(warm), mode=mode, budget=budget, group_size=group_size,
                            width=args.width, height=args.height, steps=steps, threads=args.threads or None,
                            grad_groups=k)
                r = spawn(__file__, case) | {"multiple": m}
                if mode == "decode+encoders":
                    media_rows.append(r)
                    print(f"  {m:>2}× decode+encoders alone: step peak above base {_step_above(r) or float('nan'):.0f} MiB",
                          flush=True)
                    continue
                print(f"  {m:>2}× {r['mode']:>10}: {r['stream_tokens']:,} tokens, step {r['step_s']:.2f} s "
                      f"({', '.join(f'{t:.2f}' for t in r['all_step_s'])}), peak RSS {r['rss_peak_mib']:.0f} MiB, "
                      f"+{_above(r):.0f} MiB, loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f}", flush=True)
                rows.append(r)

    table = format_table(rows)
    lines, ok = checks(rows, multiples[0], multiples[-1])
    if args.grad_groups is not None:
        flat, ok_flat = flatness(rows + media_rows, multiples[0], multiples[-1], args.grad_groups)
        lines += flat
        ok = ok and ok_flat
    w = rows[0]
    lines.append(f"workers: torch {w['torch']}, {w['threads']} intra-op threads, {w['trainable']:,} trainable "
                 f"(LoRA) parameters, AdamW lr from the recipe; after-load RSS {min(r['rss_loaded_mib'] for r in rows):.0f}–"
                 f"{max(r['rss_loaded_mib'] for r in rows):.0f} MiB")
    bad = [r for r in rows if r["step_hwm_mib"] is None and r["vm_hwm_mib"] is not None
           and abs(r["vm_hwm_mib"] - r["rss_peak_mib"]) > 1]
    if bad:
        lines.append("warning: ru_maxrss differs from VmHWM in " + ", ".join(f"{r['multiple']}×/{r['mode']}" for r in bad))
    lines.append(f"total {time.perf_counter() - t_all:.0f} s")
    print()
    print(table)
    print()
    print("\n".join(lines))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n\n```\n" + "\n".join(lines) + "\n```\n")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
