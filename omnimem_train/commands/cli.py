"""`omnimem-train` command line.

    omnimem-train infer [RECIPE.yaml] [--model DIR] [--video FILE] [--audio FILE] [--context FILE]
                        [--question "..."] [--options A B C D] [--budget N] [--scorer NAME]
                        [--group-size N] [key=value ...]
    omnimem-train calibrate RECIPE.yaml [key=value ...]
    omnimem-train eval RECIPE.yaml [--model DIR] [key=value ...]
    omnimem-train train RECIPE.yaml [key=value ...]      (multi-process: ./launch.sh RECIPE.yaml)
    omnimem-train pipeline RECIPE.yaml [key=value ...]   (testbed: generate, train base, evaluate)
    omnimem-train export RUN_OR_CHECKPOINT [--output DIR] [--overwrite] [--max-shard-size 5GB]
                         [--thinker-only] [--base MODEL]   (merge LoRA, verify, save a model folder)

With no --video/--audio/--context, `infer` runs the embedded default: it writes a short
synthetic clip (real H.264 + AAC mp4) into the run folder and streams it through the model.
User-input problems, and a write that finds the disk full, print `error: <one line>` and exit with
status 2; Ctrl-C prints `interrupted` and exits with status 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from omnimem_train.commands.calibrate import add_parser as add_calibrate_parser
from omnimem_train.commands.eval import add_parser as add_eval_parser
from omnimem_train.commands.export import add_parser as add_export_parser
from omnimem_train.commands.pipeline import add_parser as add_pipeline_parser
from omnimem_train.commands.prep import add_parser as add_prep_parser
from omnimem_train.errors import ConfigError, OmniMemError, disk_problem

DEFAULT_QUESTION = "What happens in this video?"


def _overrides_from_flags(args) -> list[str]:
    flags = [
        ("model", "model_name_or_path"), ("scorer", "memory.scorer"),
        ("group_size", "memory.group_size"), ("device", "device"), ("dtype", "dtype"),
    ]
    out = [f"{key}={getattr(args, attr)}" for attr, key in flags if getattr(args, attr) is not None]
    # A budget flag replaces the recipe's budget size, whichever form the recipe gave it in.
    sizes = {"budget": args.budget, "budget_fraction": args.budget_fraction}
    given = [k for k, v in sizes.items() if v is not None]
    if len(given) == 2:
        raise ConfigError("--budget and --budget-fraction: give one budget size, not both")
    if given:
        out += [f"memory.{k}=null" for k in ("budget", "budget_fraction", "compression_ratio") if k != given[0]]
        out.append(f"memory.{given[0]}={sizes[given[0]]}")
    return out + (["trust_remote_code=true"] if args.trust_remote_code else [])


def _demo_clip(run_dir: Path) -> str:
    """A 12-s 112x112 clip with an audio track (written once per run folder). Decoding brings its
    frames to multiples of the model's `frame_multiple` (28 px: 112x112; 32 px: 128x128)."""
    from data_prep.synthetic import write_clip

    path = run_dir / "demo_clip.mp4"
    if not path.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_clip(path, seconds=12.0, width=112, height=112, fps=8)
    return str(path)


def _check_question(question: str, options: list[str] | None) -> None:
    from omnimem_train.models.prompt import LETTERS

    if not question.strip():
        raise ConfigError("--question: empty; give the question to answer")
    if options and len(options) > len(LETTERS):
        raise ConfigError(f"--options: {len(options)} options, at most {len(LETTERS)} (A-{LETTERS[-1]})")
    for i, option in enumerate(options or [], start=1):
        if not option.strip():
            raise ConfigError(f"--options: option {i} is empty")


def cmd_infer(args) -> int:
    from tqdm import tqdm

    from omnimem_train.config import load_serving_config, save_config
    from omnimem_train.memory.registry import check_memory
    from omnimem_train.serving import load_engine
    from omnimem_train.streaming.infer import answer_question
    from omnimem_train.streaming.inputs import media_input
    from omnimem_train.utils.paths import check_writable_dir

    _check_question(args.question, args.options)
    # The model's own served settings (omnimem_memory.json: memory.*, generation.*) sit below the recipe
    # and the command line.
    cfg, note = load_serving_config(args.recipe, _overrides_from_flags(args) + args.overrides)
    check_memory(cfg.memory)  # before output_dir is created: a bad setting leaves nothing behind
    check_writable_dir(cfg.output_dir)
    if note:
        print(f"note: {note}", file=sys.stderr)
    run_dir = Path(cfg.output_dir)
    video, audio, context = args.video, args.audio, args.context
    if video is None and audio is None and context is None:
        video = _demo_clip(run_dir)
        print(f"note: no --video/--audio/--context given; streaming the generated demo clip {video}", file=sys.stderr)
    engine = load_engine(cfg)
    policy = engine.policy
    media, est_tokens = media_input(engine.adapter, cfg.media, video, audio, context)
    save_config(cfg, run_dir)
    print(f"Q: {args.question}" + "".join(f"\n   {chr(65 + i)}. {o}" for i, o in enumerate(args.options or [])),
          flush=True)
    bar = tqdm(total=est_tokens, unit="tok", desc=f"streaming ({policy.describe()})", file=sys.stderr,
               dynamic_ncols=True)

    def on_group(state, n):
        bar.total = max(bar.total, bar.n + n)  # the estimate leaves out prompt text
        bar.update(n)

    def on_text(text):
        if not bar.disable:
            bar.close()
            bar.disable = True
            print("A: ", end="")
        print(text, end="", flush=True)

    try:
        result = answer_question(engine, media, args.question, args.options, cfg.generation.system_prompt,
                                 cfg.generation.max_new_tokens, on_group=on_group, on_text=on_text,
                                 answer_format=cfg.generation.answer_format)
    finally:
        bar.close()
    if args.options:
        scores = ", ".join(f"{chr(65 + i)} {s:.2f}" for i, s in enumerate(result.option_scores))
        print(f"A: {result.text}   (log-likelihood: {scores})")
    else:
        print("" if bar.disable else "A: (empty answer)")
    print(result.report.line() + f"; streamed in {result.stream_seconds:.2f} s")
    out = {"question": args.question, "options": args.options, "video": video, "audio": audio, **result.to_dict()}
    (run_dir / "infer_result.json").write_text(json.dumps(out, indent=2))
    return 0


def cmd_train(args) -> int:
    from omnimem_train.config import load_config
    from omnimem_train.train.deepspeed import shutdown_distributed
    from omnimem_train.train.run import run_training

    cfg = load_config(args.recipe, args.overrides)
    trainer = run_training(cfg, overwrite=args.overwrite)
    if trainer.is_world_process_zero():
        print(f"saved: {cfg.output_dir} (metrics: {cfg.output_dir}/metrics.jsonl)")
    if shutdown_distributed() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A rank of a launched run is done: everything is saved and the group is torn down. Leaving
        # through interpreter shutdown can still destroy a joinable gloo/shm worker thread
        # ("terminate called without an active exception", SIGABRT) and the launcher then reports
        # the finished run as failed, so the rank exits at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omnimem-train", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("infer", help="stream a video/audio (or text-proxy) input under a memory budget and answer")
    p.add_argument("recipe", nargs="?", help="recipe YAML (default: built-in defaults, tiny model)")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. memory.group_size=512)")
    p.add_argument("--model", help="model directory or builtin:<name> (sets model_name_or_path; the folder's "
                                   "omnimem_memory.json, if any, supplies memory.* and the answer format and "
                                   "system prompt it was trained with (generation.*) below the recipe)")
    p.add_argument("--video", help="video file (its audio track is used unless media.audio=off)")
    p.add_argument("--audio", help="separate audio file (wav/flac/...); alone: an audio-only stream")
    p.add_argument("--context", help="text-proxy context file for text-only LMs (lines 'visual:/audio:/text: ...')")
    p.add_argument("--question", default=DEFAULT_QUESTION,
                   help=f"the question to answer after the stream (default: {DEFAULT_QUESTION!r})")
    p.add_argument("--options", nargs="+", help="multiple-choice options, scored by log-likelihood")
    p.add_argument("--budget", type=int, help="retained audio+visual tokens per layer (memory.budget)")
    p.add_argument("--budget-fraction", type=float,
                   help="per-layer budget as a fraction of the stream's own audio+visual tokens, e.g. 0.0625 "
                        "(memory.budget_fraction)")
    p.add_argument("--scorer", help="memory method: full or a scorer name (memory.scorer)")
    p.add_argument("--group-size", type=int, help="tokens per streaming group (memory.group_size)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", help="float32 | bfloat16 | float16")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom model code from the model dir")
    p.set_defaults(func=cmd_infer)
    add_calibrate_parser(sub)
    add_prep_parser(sub)
    add_eval_parser(sub)
    p = sub.add_parser("train", help="budget-aware fine-tuning through the streaming forward (LoRA or full)")
    p.add_argument("recipe", nargs="?", help="recipe YAML (e.g. recipes/train/tiny_cpu.yaml)")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. learning_rate=1e-4)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an earlier run in output_dir first (only a folder omnimem-train marked as a run); "
                        "without it such a folder is refused, unless resume_from_checkpoint continues it")
    p.set_defaults(func=cmd_train)
    add_pipeline_parser(sub)
    add_export_parser(sub)
    return parser


def _quiet_libraries() -> None:
    """Settings the libraries read when they are imported. Called after argument parsing, so that
    `--help` and a usage error import none of them (torch alone takes seconds)."""
    from omnimem_train.utils.warnings import install_filters

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    install_filters()  # known harmless warnings, by exact message and module; any other one shows

    def one_line(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = one_line
    import torch

    if not torch.cuda.is_available():  # DeepSpeed (imported by transformers) would log its CPU fallback
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except OmniMemError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        full = disk_problem(e)
        if full is None:
            raise
        problem, path = full
        print(f"error: {path}: {problem}" if path else f"error: {problem}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    # key=value overrides may come after flags, where argparse no longer takes positionals.
    stray = [u for u in unknown if "=" not in u or u.startswith("-")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    _quiet_libraries()
    args.overrides += unknown
    # argparse puts key=value words into `overrides` only after the recipe; a recipe-less call
    # with overrides lands its first override in `recipe`.
    if args.recipe and "=" in args.recipe and not args.recipe.endswith((".yaml", ".yml")):
        args.overrides.insert(0, args.recipe)
        args.recipe = None
    if getattr(args, "options", None):  # `--options a b key=value`: nargs="+" swallowed an override
        from omnimem_train.config import config_keys

        keys = config_keys()
        moved = [o for o in args.options if o.split("=", 1)[0] in keys and "=" in o]
        args.options = [o for o in args.options if o not in moved]
        args.overrides += moved
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
