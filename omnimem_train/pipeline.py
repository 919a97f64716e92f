"""`omnimem-train pipeline RECIPE.yaml [key=value ...]`: the testbed job end to end.

    1. generate the testbed (`data_prep.testbed`; reused when its files and arguments are unchanged),
    2. train the base model with the `train` stage's recipe (reused when `output_dir` already holds
       a finished model trained with the same resolved config); with `curriculum.recipe` set, a
       first training stage runs before it (e.g. only the temporal questions) and `train` starts
       from its output,
    3. evaluate it with the `eval` stage's recipe: full memory plus the scorer x budget grid, print
       the table and write the plot (finished cells are skipped on re-runs),
    4. (when `tune.recipe` is set) budget-aware LoRA on the base model with the `tune` recipe, export
       the merged model (`omnimem-train export`), evaluate it with the eval recipe plus
       `tune.eval_overrides` (the budget it was tuned for), and print training-free vs tuned
       accuracy side by side for the cells both evaluated.

The stages are the ordinary `train` / `eval` recipes; the pipeline only points them at the
generated manifest and at each other (`dataset`, `eval.manifest`, `model_name_or_path`), then adds
each stage's `overrides`. Wall time per stage is printed and saved in `<eval output_dir>/pipeline.json`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from omnimem_train.config.schema import _int, _number, _require
from omnimem_train.errors import ConfigError
from omnimem_train.utils.atomic import atomic_write_text

TRAIN_RESULTS = "train_results.json"  # HF Trainer.save_metrics("train", ...), by train.run.run_training


@dataclass
class TestbedSection:
    """`data_prep.testbed` arguments (see `TestbedSpec` for the clip design)."""

    __test__ = False  # not a pytest class

    out: str = field(default="checkpoints/data/testbed", metadata={"help": "output folder of the testbed"})
    train: int = field(default=200, metadata={"help": "training clips"})
    val: int = field(default=0, metadata={"help": "validation clips"})
    test: int = field(default=50, metadata={"help": "test clips"})
    seed: int = 0
    seconds: float = field(default=8.0, metadata={"help": "clip length (the evaluation stream length)"})
    visual_events: int = 2
    audio_events: int = 2
    box_fraction: float = field(default=0.5, metadata={"help": "square side / frame side"})
    train_questions: int = field(default=1, metadata={"help": "questions per training clip (1-4, distinct "
                                                              "types; test/val keep 1)"})

    def __post_init__(self) -> None:
        _require(isinstance(self.out, str) and self.out != "", "out", self.out, "a folder path")
        for name in ("train", "test"):
            _int(self, name, ge=1)
        _int(self, "val", ge=0)
        _int(self, "seed")
        _number(self, "seconds", gt=0)
        _int(self, "train_questions", ge=1)
        _require(self.train_questions <= 4, "train_questions", self.train_questions, "1 to 4")

    def spec(self):
        from data_prep.testbed import TestbedSpec

        return TestbedSpec(seconds=self.seconds, n_visual_events=self.visual_events,
                           n_audio_events=self.audio_events, box_fraction=self.box_fraction)


@dataclass
class StageSection:
    recipe: str | None = field(default=None, metadata={"help": "the stage's recipe YAML"})
    overrides: list[str] = field(default_factory=list, metadata={"help": "key=value overrides for the stage"})


@dataclass
class TuneSection(StageSection):
    eval_overrides: list[str] = field(
        default_factory=list, metadata={"help": "overrides for evaluating the tuned model (its budget, output_dir)"}
    )


@dataclass
class PipelineConfig:
    testbed: TestbedSection = field(default_factory=TestbedSection)
    curriculum: StageSection = field(default_factory=StageSection)
    train: StageSection = field(default_factory=StageSection)
    eval: StageSection = field(default_factory=StageSection)
    tune: TuneSection = field(default_factory=TuneSection)


def curriculum_config(pcfg: PipelineConfig):
    """-> the first training stage's Config on the generated manifest, or None without one."""
    from omnimem_train.config import load_config

    if not pcfg.curriculum.recipe:
        return None
    return load_config(pcfg.curriculum.recipe, [f"dataset={_manifest(pcfg)}", *pcfg.curriculum.overrides])


def _manifest(pcfg: PipelineConfig) -> str:
    return str(Path(pcfg.testbed.out) / "manifest.jsonl")


def stage_configs(pcfg: PipelineConfig):
    """-> (train Config, eval Config), wired to the generated manifest and to each other (and the
    train stage to the curriculum stage's output, when there is one)."""
    from omnimem_train.config import load_config

    for name in ("train", "eval"):
        if not getattr(pcfg, name).recipe:
            raise ConfigError(f"{name}.recipe: required (the {name} stage's recipe YAML)")
    manifest = _manifest(pcfg)
    first = curriculum_config(pcfg)
    start = [f"model_name_or_path={first.output_dir}"] if first is not None else []
    train_cfg = load_config(pcfg.train.recipe, [f"dataset={manifest}", *start, *pcfg.train.overrides])
    if first is not None and Path(first.output_dir).resolve() == Path(train_cfg.output_dir).resolve():
        raise ConfigError(f"curriculum.overrides: output_dir {first.output_dir} is the train stage's too; "
                          "give the curriculum stage its own")
    eval_cfg = load_config(pcfg.eval.recipe, [f"eval.manifest={manifest}",
                                              f"model_name_or_path={train_cfg.output_dir}", *pcfg.eval.overrides])
    return train_cfg, eval_cfg


def tune_configs(pcfg: PipelineConfig, train_cfg, eval_cfg):
    """-> (LoRA Config on the base model, eval Config of its merged export)."""
    from omnimem_train.config import load_config

    tune_cfg = load_config(pcfg.tune.recipe, [f"dataset={train_cfg.dataset}",
                                              f"model_name_or_path={train_cfg.output_dir}", *pcfg.tune.overrides])
    merged = str(Path(tune_cfg.output_dir) / "merged")
    tuned_eval = load_config(pcfg.eval.recipe, [f"eval.manifest={eval_cfg.eval.manifest}", *pcfg.eval.overrides,
                                                f"output_dir={Path(eval_cfg.output_dir) / 'tuned'}",
                                                f"model_name_or_path={merged}", *pcfg.tune.eval_overrides])
    return tune_cfg, tuned_eval


def finished_training(cfg) -> bool:
    """`output_dir` holds a finished run with exactly this resolved config: `train_results.json`
    (written after the final weights) is newer than `config.yaml` (rewritten when a run starts, so
    an interrupted re-run never passes for the finished run it overwrote)."""
    from omnimem_train.config.load import CONFIG_FILENAME, config_to_dict, load_config

    out = Path(cfg.output_dir)
    config, done = out / CONFIG_FILENAME, out / TRAIN_RESULTS
    if not (config.exists() and done.exists() and any(out.glob("*.safetensors"))):
        return False
    if done.stat().st_mtime_ns < config.stat().st_mtime_ns:
        return False
    try:
        saved = load_config(out / CONFIG_FILENAME)
    except Exception:  # an unreadable or outdated config: train again
        return False
    mine, theirs = config_to_dict(cfg), config_to_dict(saved)
    mine.pop("resume_from_checkpoint"), theirs.pop("resume_from_checkpoint")
    return mine == theirs


def _started_before(cfg, first) -> bool:
    """`cfg`'s finished run is older than the `first` stage's finished run it started from (False
    when either has not finished)."""
    if first is None:
        return False
    mine, theirs = (Path(c.output_dir) / TRAIN_RESULTS for c in (cfg, first))
    return mine.exists() and theirs.exists() and mine.stat().st_mtime_ns < theirs.stat().st_mtime_ns


def _train_stage(cfg, label: str, say, stale: bool = False) -> float:
    """Train `cfg` unless its output_dir holds a finished run of the same config (and not `stale`);
    -> the stage's wall seconds."""
    from omnimem_train.train.run import run_training

    t0 = time.perf_counter()
    if finished_training(cfg) and not stale:
        say(f"{label}: reusing {cfg.output_dir} (finished with the same config)")
    else:
        say(f"{label}: training -> {cfg.output_dir}")
        run_training(cfg)
    return round(time.perf_counter() - t0, 1)


def run_pipeline(pcfg: PipelineConfig, out=None) -> dict:
    from data_prep.testbed import generate_testbed
    from omnimem_train.eval.grid import format_table, run_eval

    out = out or sys.stdout
    say = lambda msg: print(msg, file=out, flush=True)  # noqa: E731
    train_cfg, eval_cfg = stage_configs(pcfg)
    tb, times, t_all = pcfg.testbed, {}, time.perf_counter()

    tune = bool(pcfg.tune.recipe)
    n = 4 if tune else 3
    t0 = time.perf_counter()
    say(f"[1/{n}] testbed: {tb.train} train / {tb.val} val / {tb.test} test clips of {tb.seconds:g} s -> {tb.out}")
    generate_testbed(tb.out, tb.train, tb.val, tb.test, tb.spec(), tb.seed, log=say, train_questions=tb.train_questions)
    times["testbed_s"] = round(time.perf_counter() - t0, 1)

    first = curriculum_config(pcfg)
    if first is not None:
        times["curriculum_s"] = _train_stage(first, f"[2/{n}] base model, curriculum stage", say)
    times["train_s"] = _train_stage(train_cfg, f"[2/{n}] base model", say, stale=_started_before(train_cfg, first))

    t0 = time.perf_counter()
    say(f"[3/{n}] evaluation -> {eval_cfg.output_dir}")
    summary = run_eval(eval_cfg)
    times["eval_s"] = round(time.perf_counter() - t0, 1)
    say(format_table(summary["cells"]))
    say(f"plot: {summary['plot']}")
    record = {"train_output_dir": train_cfg.output_dir, "summary": summary["summary"]}

    if tune:
        t0 = time.perf_counter()
        tuned = _tune_export_eval(pcfg, train_cfg, eval_cfg, say, n)
        times["tune_s"] = round(time.perf_counter() - t0, 1)
        say(format_side_by_side(summary["cells"], tuned["cells"]))
        record["tuned_summary"] = tuned["summary"]
        summary = {**summary, "tuned": tuned}
    times["total_s"] = round(time.perf_counter() - t_all, 1)
    say("wall time: " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in times.items()))
    atomic_write_text(Path(eval_cfg.output_dir) / "pipeline.json",
                      json.dumps({"times": times, **record}, indent=2) + "\n")
    return {**summary, "times": times}


def _tune_export_eval(pcfg: PipelineConfig, train_cfg, eval_cfg, say, n: int) -> dict:
    """Step 4: budget-aware LoRA on the base, export (merge + verify), evaluate the export."""
    from omnimem_train.eval.grid import run_eval
    from omnimem_train.export.run import export_run
    from omnimem_train.train.run import run_training

    tune_cfg, tuned_eval = tune_configs(pcfg, train_cfg, eval_cfg)
    merged = Path(tuned_eval.model_name_or_path)
    export_record = merged / "omnimem_export.json"
    adapter = Path(tune_cfg.output_dir) / "adapter_model.safetensors"
    if (finished_training(tune_cfg) and export_record.exists() and adapter.exists()
            and export_record.stat().st_mtime_ns >= adapter.stat().st_mtime_ns):
        say(f"[4/{n}] budget-aware LoRA: reusing {tune_cfg.output_dir} and its export {merged}")
    else:
        say(f"[4/{n}] budget-aware LoRA on the base model -> {tune_cfg.output_dir}")
        run_training(tune_cfg)
        export_run(tune_cfg.output_dir, merged, overwrite=True, log=say)
    say(f"      evaluating the exported model -> {tuned_eval.output_dir}")
    return run_eval(tuned_eval)


def format_side_by_side(free: list[dict], tuned: list[dict]) -> str:
    """Training-free vs tuned accuracy for the cells (scorer, budget, memory) both evaluated."""
    from omnimem_train.eval.grid import accuracy_str, budget_str

    key = lambda c: (c["scorer"], budget_str(c), c.get("modality"))  # noqa: E731
    before = {key(c): c for c in free}
    lines = [f"{'scorer':<12} {'budget':>8} {'memory':<6} {'training-free':<22} {'tuned (exported)':<22}", "-" * 74]
    for c in tuned:
        if key(c) in before:
            lines.append(f"{c['scorer']:<12} {budget_str(c):>8} {c.get('modality') or '-':<6} "
                         f"{accuracy_str(before[key(c)]):<22} {accuracy_str(c):<22}")
    return "\n".join(lines)


def cmd_pipeline(args) -> int:
    from omnimem_train.config import load_config

    run_pipeline(load_config(args.recipe, args.overrides, schema=PipelineConfig))
    return 0


def add_parser(sub) -> None:
    """Register `pipeline` on the `omnimem-train` subparsers."""
    p = sub.add_parser("pipeline", help="testbed end to end: generate, train (or reuse) the base model, evaluate, "
                                        "then optionally budget-aware LoRA -> export -> evaluate")
    p.add_argument("recipe", help="pipeline YAML (e.g. recipes/testbed/pipeline_small.yaml)")
    p.add_argument("overrides", nargs="*", help="overrides, e.g. testbed.train=100 train.overrides=[max_steps=10]")
    p.set_defaults(func=cmd_pipeline)
