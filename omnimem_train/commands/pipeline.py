"""`omnimem-train pipeline RECIPE.yaml [key=value ...]`: the testbed job end to end.

    1. generate the testbed (`data_prep.testbed`; reused when its files and arguments are unchanged),
    2. the base model of `model_family` (`MODEL_FAMILIES`: Qwen2.5-Omni or video-SALMONN 2+, on the
       same testbed and questions): `base_model` (a trained model folder; unset: the family's shipped
       one, `assets/testbed-base` for qwen2_5_omni) unless `train_base: true` or the family ships
       none, in which case the `train` stage's recipe (unset: the family's base recipe) trains it
       (reused when `output_dir` already holds a finished model trained with the same resolved
       config); with `curriculum.recipe` set, a first training stage runs before it and `train`
       starts from its output. The model evaluated must be of the family (checked before any stage),
    3. evaluate it with the `eval` stage's recipe: full memory plus the scorer x budget x allocation
       grid (the calibrated allocation is measured on train-split clips), print the table and the
       paired comparisons, write the plot (finished cells are skipped on re-runs),
    4. (when `tune.recipe` is set) budget-aware LoRA on the base model with the `tune` recipe, export
       the merged model (`omnimem-train export`), evaluate it with the eval recipe plus
       `tune.eval_overrides`; with `tune.calibrated` the tuning runs under the eval stage's
       calibrated profile and the export is evaluated with that same profile, so the model is
       trained at exactly the budget and allocation it is evaluated at. `control` (optional) is a
       second tuning run wired the same way (e.g. full-context LoRA with the same steps). The
       training-free and tuned accuracies are printed side by side with paired CIs.

The stages are the ordinary `train` / `eval` recipes; the pipeline only points them at the
generated manifest and at each other (`dataset`, `eval.manifest`, `model_name_or_path`), then adds
each stage's `overrides`. The job ends on one block (`format_ending`): the result table, the paths of
the plots and summaries, the wall time per stage (reused stages marked) and what the numbers mean,
in sentences computed from the paired comparisons (`explain`). `<eval output_dir>/pipeline.json`
keeps every run (`PIPELINE_RECORD`): a re-run that reuses every stage adds its record to the
measured one instead of replacing it.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from omnimem_train.config.runs import is_finished_run
from omnimem_train.config.schema import _bool, _choice, _int, _number, _require
from omnimem_train.errors import ConfigError
from omnimem_train.utils.atomic import atomic_write_text

TRAIN_RESULTS = "train_results.json"  # HF Trainer.save_metrics("train", ...), by train.run.run_training
# <eval output_dir>/pipeline.json: the latest run's record at the top level ("times", "reused",
# "date", "commit", "base_model", "summary", "<tune>_summary") and every run's, oldest first, in "runs".
PIPELINE_RECORD = "pipeline.json"


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
    depth_thirds: bool = field(default=False, metadata={
        "help": "the long-stream split: each val/test clip's events all lie in one third of it (first, middle, "
                "last), balanced over clips and question types (manifest field `depth`)"})
    train_seconds: list[float] = field(default_factory=list, metadata={
        "help": "lengths of the training clips, cycled over them (a mix, e.g. [4, 16, 32, 64]); empty: `seconds`"})

    def __post_init__(self) -> None:
        _require(isinstance(self.out, str) and self.out != "", "out", self.out, "a folder path")
        for name in ("train", "test"):
            _int(self, name, ge=1)
        _int(self, "val", ge=0)
        _int(self, "seed")
        _number(self, "seconds", gt=0)
        _int(self, "train_questions", ge=1)
        _require(self.train_questions <= 4, "train_questions", self.train_questions, "1 to 4")
        _bool(self, "depth_thirds")
        ok = isinstance(self.train_seconds, list) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in self.train_seconds)
        _require(ok, "train_seconds", self.train_seconds, "a list of clip lengths > 0")

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
    calibrated: bool = field(
        default=False,
        metadata={"help": "train under the eval stage's calibrated per-layer profile (memory.budget_file) and "
                          "evaluate the export with that same profile (eval.calibration_profile)"},
    )


@dataclass(frozen=True)
class ModelFamily:
    """A model family the testbed pipeline runs: its shipped trained base model (None: none ships, the
    train stage trains one), the recipe that trains its base from its random built-in, and how a model
    is recognised as one of the family (built-in names; config.json model_type values)."""

    base_model: str | None
    base_recipe: str
    builtins: tuple[str, ...]
    model_types: tuple[str, ...]


MODEL_FAMILIES = {
    "qwen2_5_omni": ModelFamily("assets/testbed-base", "recipes/testbed/base_full.yaml",
                                ("testbed-omni", "tiny-omni"), ("qwen2_5_omni_thinker", "qwen2_5_omni")),
    # A release folder's config.json says qwen2_5_vl and holds an audio_config (models/vsalmonn.py).
    "vsalmonn2plus": ModelFamily(None, "recipes/testbed/base_vsalmonn2plus.yaml",
                                 ("testbed-vsalmonn2plus", "tiny-vsalmonn2plus"), ("vsalmonn2plus", "qwen2_5_vl")),
}


def family_of(model_name_or_path: str) -> str | None:
    """The MODEL_FAMILIES key of a model as a run config names it (`builtin:<name>` or a folder with a
    config.json); None when it is none of them or cannot be read (loading it reports why)."""
    if model_name_or_path.startswith("builtin:"):
        name = model_name_or_path.split(":", 1)[1]
        return next((k for k, f in MODEL_FAMILIES.items() if name in f.builtins), None)
    try:
        cfg = json.loads((Path(model_name_or_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict) or (cfg.get("model_type") == "qwen2_5_vl" and "audio_config" not in cfg):
        return None
    return next((k for k, f in MODEL_FAMILIES.items() if cfg.get("model_type") in f.model_types), None)


@dataclass
class PipelineConfig:
    testbed: TestbedSection = field(default_factory=TestbedSection)
    model_family: str = field(
        default="qwen2_5_omni",
        metadata={"help": "the model family: " + " | ".join(MODEL_FAMILIES) + "; picks the base model and "
                          "the base recipe (train.recipe) when they are not given"},
    )
    base_model: str | None = field(
        default=None,
        metadata={"help": "a trained base model folder to evaluate and tune; null: the family's shipped one "
                          "(qwen2_5_omni: assets/testbed-base; vsalmonn2plus ships none, so the train stage "
                          "trains one)"},
    )
    train_base: bool = field(default=False, metadata={"help": "train the base model even when a base model ships"})
    curriculum: StageSection = field(default_factory=StageSection)
    train: StageSection = field(default_factory=StageSection)
    eval: StageSection = field(default_factory=StageSection)
    tune: TuneSection = field(default_factory=TuneSection)
    control: TuneSection = field(default_factory=TuneSection)

    def __post_init__(self) -> None:
        _choice(self, "model_family", tuple(MODEL_FAMILIES))
        _require(self.base_model is None or (isinstance(self.base_model, str) and self.base_model.strip() != ""),
                 "base_model", self.base_model, "a model folder or null")

    @property
    def family(self) -> ModelFamily:
        return MODEL_FAMILIES[self.model_family]

    @property
    def shipped_base(self) -> str | None:
        """The trained base folder to use: `base_model`, else the family's (None when none ships)."""
        return self.base_model if self.base_model is not None else self.family.base_model

    @property
    def uses_shipped_base(self) -> bool:
        return self.shipped_base is not None and not self.train_base

    @property
    def train_recipe(self) -> str:
        """The train stage's recipe: `train.recipe`, else the family's base recipe."""
        return self.train.recipe or self.family.base_recipe


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

    if not pcfg.eval.recipe:
        raise ConfigError("eval.recipe: required (the eval stage's recipe YAML)")
    manifest = _manifest(pcfg)
    first = curriculum_config(pcfg)
    start = [f"model_name_or_path={first.output_dir}"] if first is not None else []
    train_cfg = load_config(pcfg.train_recipe, [f"dataset={manifest}", *start, *pcfg.train.overrides])
    if first is not None and Path(first.output_dir).resolve() == Path(train_cfg.output_dir).resolve():
        raise ConfigError(f"curriculum.overrides: output_dir {first.output_dir} is the train stage's too; "
                          "give the curriculum stage its own")
    base = base_model(pcfg, train_cfg)
    _check_family(pcfg, base if pcfg.uses_shipped_base else (first or train_cfg).model_name_or_path,
                  "base_model" if pcfg.uses_shipped_base else
                  f"{'curriculum' if first is not None else 'train'} stage's model_name_or_path")
    eval_cfg = load_config(pcfg.eval.recipe, [f"eval.manifest={manifest}", f"model_name_or_path={base}",
                                              *pcfg.eval.overrides])
    for name in ("tune", "control"):
        if getattr(pcfg, name).recipe and getattr(pcfg, name).calibrated and \
                "calibrated" not in eval_cfg.eval.allocations:
            raise ConfigError(f"{name}.calibrated: needs the eval stage's calibrated profile, but its "
                              f"eval.allocations {eval_cfg.eval.allocations} has no calibrated")
    return train_cfg, eval_cfg


def base_model(pcfg: PipelineConfig, train_cfg) -> str:
    """The base model the pipeline evaluates and tunes: the shipped folder (`base_model` or the
    family's), or the train stage's output."""
    if pcfg.uses_shipped_base:
        if not (Path(pcfg.shipped_base) / "config.json").is_file():
            raise ConfigError(f"base_model: {pcfg.shipped_base}: not a model folder (no config.json); "
                              "set train_base=true to train one")
        return pcfg.shipped_base
    return train_cfg.output_dir


def _check_family(pcfg: PipelineConfig, model: str, what: str) -> None:
    """ConfigError unless `model` (the shipped base, or the model the training starts from) is of
    `model_family`; a model of no known family passes (loading it checks it)."""
    family = family_of(model)
    if family is not None and family != pcfg.model_family:
        raise ConfigError(f"model_family: {pcfg.model_family}, but the {what} {model} is a {family} model; "
                          f"leave base_model and train.recipe unset to take the family's "
                          f"({pcfg.family.base_recipe})")


def tune_configs(pcfg: PipelineConfig, train_cfg, eval_cfg, section: str = "tune"):
    """-> (LoRA Config on the base model, eval Config of its merged export) for the `tune` (or
    `control`) section. The export is evaluated in `<eval output_dir>/<the tuning run's folder name>`."""
    from omnimem_train.config import load_config
    from omnimem_train.eval.calibration import calibration_path

    sec: TuneSection = getattr(pcfg, section)
    profile = str(calibration_path(eval_cfg))
    calibrated = [f"memory.budget_file={profile}"] if sec.calibrated else []
    tune_cfg = load_config(sec.recipe, [f"dataset={train_cfg.dataset}", f"model_name_or_path={eval_cfg.model_name_or_path}",
                                        *calibrated, *sec.overrides])
    merged = str(Path(tune_cfg.output_dir) / "merged")
    tuned_eval = load_config(pcfg.eval.recipe, [f"eval.manifest={eval_cfg.eval.manifest}", *pcfg.eval.overrides,
                                                f"output_dir={Path(eval_cfg.output_dir) / Path(tune_cfg.output_dir).name}",
                                                f"model_name_or_path={merged}",
                                                f"eval.calibration_profile={profile}", *sec.eval_overrides])
    return tune_cfg, tuned_eval


def finished_training(cfg) -> bool:
    """`output_dir` holds a finished run of this resolved config (resume_from_checkpoint aside) and weights."""
    done = is_finished_run(cfg, cfg.output_dir, [TRAIN_RESULTS], ignore=["resume_from_checkpoint"])
    return done and any(Path(cfg.output_dir).glob("*.safetensors"))


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
        run_training(cfg, overwrite=True)  # a stale run of this stage: it is trained again
    return round(time.perf_counter() - t0, 1)


def run_pipeline(pcfg: PipelineConfig, out=None) -> dict:
    from data_prep.testbed import generate_testbed
    from omnimem_train.eval.grid import format_table, run_eval
    from omnimem_train.eval.paired import format_comparisons

    out = out or sys.stdout
    say = lambda msg: print(msg, file=out, flush=True)  # noqa: E731
    train_cfg, eval_cfg = stage_configs(pcfg)
    tb, times, t_all = pcfg.testbed, {}, time.perf_counter()

    tunes = [name for name in ("tune", "control") if getattr(pcfg, name).recipe]
    _check_folders(pcfg, train_cfg, eval_cfg, tunes)
    started = _now()
    stages = _stage_files(pcfg, train_cfg, eval_cfg, tunes)  # what each stage writes when it does work
    before = {stage: _stamps(paths) for stage, paths in stages.items()}
    n = 3 + len(tunes)
    t0 = time.perf_counter()
    say(f"[1/{n}] testbed: {tb.train} train / {tb.val} val / {tb.test} test clips of {tb.seconds:g} s -> {tb.out}")
    generate_testbed(tb.out, tb.train, tb.val, tb.test, tb.spec(), tb.seed, log=say, train_questions=tb.train_questions,
                     depth_thirds=tb.depth_thirds, train_seconds=tb.train_seconds or None)
    times["testbed_s"] = round(time.perf_counter() - t0, 1)

    if pcfg.uses_shipped_base:
        say(f"[2/{n}] base model: {pcfg.shipped_base} (trained and shipped; train_base=true retrains it)")
    else:
        first = curriculum_config(pcfg)
        if first is not None:
            times["curriculum_s"] = _train_stage(first, f"[2/{n}] base model, curriculum stage", say)
        times["train_s"] = _train_stage(train_cfg, f"[2/{n}] base model", say,
                                        stale=_started_before(train_cfg, first))

    t0 = time.perf_counter()
    say(f"[3/{n}] evaluation -> {eval_cfg.output_dir}")
    summary = run_eval(eval_cfg)
    times["eval_s"] = round(time.perf_counter() - t0, 1)
    say(format_table(summary["cells"]))
    if summary["comparisons"]:
        say("paired comparisons (same clips; 'beats' only when the 95% CI of the difference excludes 0):")
        say(format_comparisons(summary["comparisons"]))
    record = {"base_model": eval_cfg.model_name_or_path, "summary": summary["summary"]}

    for k, name in enumerate(tunes):
        t0 = time.perf_counter()
        tuned = _tune_export_eval(pcfg, train_cfg, eval_cfg, say, f"[{4 + k}/{n}]", name)
        times[f"{name}_s"] = round(time.perf_counter() - t0, 1)
        say(format_side_by_side(summary["cells"], tuned["cells"], name, summary["predictions"],
                                tuned["predictions"]))
        record[f"{name}_summary"] = tuned["summary"]
        summary = {**summary, name: tuned}
    times["total_s"] = round(time.perf_counter() - t_all, 1)

    after = {stage: _stamps(paths) for stage, paths in stages.items()}
    reused = {stage: bool(before[stage]) and None not in before[stage].values() and before[stage] == after[stage]
              for stage in stages}
    evaluated = {stage: sum(before[stage][f] != after[stage][f] for f in before[stage])
                 for stage in stages if stage == "eval" or stage.endswith("_eval")}
    run = {"date": started, **_commit(), "times": times, "reused": reused, "cells_evaluated": evaluated}
    record_path = Path(eval_cfg.output_dir) / PIPELINE_RECORD
    runs = [*_read_runs(record_path), run]
    atomic_write_text(record_path, json.dumps({**run, **record, "runs": runs}, indent=2) + "\n")
    steps = {name: tune_configs(pcfg, train_cfg, eval_cfg, name)[0].max_steps for name in tunes}
    say(format_ending(summary, tunes, steps, times, reused, record_path, len(runs), eval_cfg.output_dir))
    return {**summary, "times": times, "reused": reused}


def _check_folders(pcfg: PipelineConfig, train_cfg, eval_cfg, tunes: list[str]) -> None:
    """Every stage's memory methods exist (`_check_methods`) and every folder a stage writes into can
    be written: checked before the testbed is generated or any model is loaded, so a typo or a bad
    output_dir of a late stage costs no earlier stage's time. The methods first: a typo creates no folder."""
    from omnimem_train.utils.paths import check_writable_dir

    stages = []
    if not pcfg.uses_shipped_base:
        first = curriculum_config(pcfg)
        stages += [("curriculum", first)] if first is not None else []
        stages.append(("train", train_cfg))
    stages.append(("eval", eval_cfg))
    for name in tunes:
        tune_cfg, tuned_eval = tune_configs(pcfg, train_cfg, eval_cfg, name)
        stages += [(name, tune_cfg), (f"{name} evaluation", tuned_eval)]
    _check_methods(stages)
    check_writable_dir(pcfg.testbed.out, "testbed.out")
    for name, cfg in stages:
        check_writable_dir(cfg.output_dir, f"output_dir ({name} stage)")


def _check_methods(stages: list) -> None:
    """The memory methods each stage names exist: an evaluation stage's grid (eval.scorers,
    eval.per_head_scorers), a training stage's memory.scorer under compression: streaming. A
    training stage's budget file is checked only if it exists already: the calibrated profile a tuning
    stage trains under is written by the eval stage."""
    import dataclasses

    from omnimem_train.eval.grid import check_scorers
    from omnimem_train.memory.registry import check_memory

    for name, cfg in stages:
        try:
            if name == "eval" or name.endswith(" evaluation"):
                check_scorers(cfg.eval.scorers)
                check_scorers(cfg.eval.per_head_scorers, per_head=True)
            elif cfg.compression == "streaming":
                memory = cfg.memory
                if memory.budget_file is not None and not Path(memory.budget_file).is_file():
                    memory = dataclasses.replace(memory, budget_file=None)
                check_memory(memory)
        except ConfigError as e:
            raise ConfigError(f"{name} stage: {e}") from None


def _tune_export_eval(pcfg: PipelineConfig, train_cfg, eval_cfg, say, step: str, section: str) -> dict:
    """Budget-aware LoRA (or the control run) on the base, export (merge + verify), evaluate the export."""
    from omnimem_train.eval.grid import run_eval
    from omnimem_train.export.run import export_run
    from omnimem_train.train.run import run_training

    tune_cfg, tuned_eval = tune_configs(pcfg, train_cfg, eval_cfg, section)
    merged = Path(tuned_eval.model_name_or_path)
    export_record = merged / "omnimem_export.json"
    adapter = Path(tune_cfg.output_dir) / "adapter_model.safetensors"
    # A calibrated profile measured again since the run (same path, new content) makes it stale.
    profile = Path(tune_cfg.memory.budget_file) if tune_cfg.memory.budget_file else None
    if (finished_training(tune_cfg) and export_record.exists() and adapter.exists()
            and export_record.stat().st_mtime_ns >= adapter.stat().st_mtime_ns
            and not (profile is not None and profile.is_file()
                     and profile.stat().st_mtime_ns > adapter.stat().st_mtime_ns)):
        say(f"{step} {section}: reusing {tune_cfg.output_dir} and its export {merged}")
    else:
        say(f"{step} {section}: LoRA on the base model ({_describe_training(tune_cfg)}) -> {tune_cfg.output_dir}")
        run_training(tune_cfg, overwrite=True)
        export_run(tune_cfg.output_dir, merged, overwrite=True, log=say)
    say(f"      evaluating the exported model -> {tuned_eval.output_dir}")
    return run_eval(tuned_eval)


def _describe_training(cfg) -> str:
    if cfg.compression == "none":
        return f"full context, {cfg.max_steps} steps"
    m = cfg.memory
    size = (f"budget_fraction {m.budget_fraction:g}" if m.budget_fraction is not None else
            f"budget {m.budget}" if m.budget is not None else f"compression_ratio {m.compression_ratio}")
    if cfg.train_budget_fractions:
        size = f"budget_fraction drawn in {cfg.train_budget_fractions} per batch"
    alloc = "calibrated" if m.budget_file else ("uniform" if m.modality_aware else "blind")
    return f"{m.scorer}, {size}, {alloc} allocation, {cfg.max_steps} steps"


def format_side_by_side(free: list[dict], tuned: list[dict], label: str = "tuned",
                        free_pred: dict | None = None, tuned_pred: dict | None = None) -> str:
    """Training-free vs tuned accuracy for the cells both evaluated, with the paired 95% CI of the
    difference on the same clips (when the predictions are given). When tuning changed no answer,
    the table says so and why it cannot differ."""
    from omnimem_train.eval.grid import accuracy_str, budget_str
    from omnimem_train.eval.paired import pair_predictions, paired_bootstrap

    key = lambda c: (c["scorer"], budget_str(c), c.get("allocation"))  # noqa: E731
    before = {key(c): c for c in free}
    w = max([12, *(len(c["scorer"]) for c in tuned)])
    head = (f"{'scorer':<{w}} {'budget':>8} {'allocation':<10} {'training-free':<22} {label + ' (exported)':<22} "
            f"{'paired diff [95% CI]':<26} changed answers")
    lines = [head, "-" * len(head)]
    unchanged = []
    for c in tuned:
        if key(c) not in before:
            continue
        b = before[key(c)]
        paired, changed = "", ""
        if free_pred is not None and tuned_pred is not None and b["cell"] in free_pred and c["cell"] in tuned_pred:
            x, y = pair_predictions(tuned_pred[c["cell"]], free_pred[b["cell"]])
            r = paired_bootstrap(x, y)
            paired = f"{r.diff:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}]"
            choices = _changed_choices(free_pred[b["cell"]], tuned_pred[c["cell"]])
            changed = f"{choices} of {r.n}"
            if choices == 0:
                unchanged.append(c["cell"])
        lines.append(f"{c['scorer']:<{w}} {budget_str(c):>8} {c.get('allocation') or '-':<10} "
                     f"{accuracy_str(b):<22} {accuracy_str(c):<22} {paired:<26} {changed}")
    if unchanged:
        lines.append(f"note: {label} changed no answer in {', '.join(unchanged)}: every clip's best option is the "
                     "same before and after, so the accuracies are equal by construction (the adapter moved the "
                     "option scores too little to flip any; see the option_scores in the cells' predictions.jsonl)")
    return "\n".join(lines)


def _changed_choices(before: list[dict], after: list[dict]) -> int:
    by_id = {r["id"]: r["choice"] for r in before}
    return sum(1 for r in after if r["id"] in by_id and by_id[r["id"]] != r["choice"])


def _now() -> str:
    from datetime import datetime

    return datetime.now().astimezone().isoformat(timespec="seconds")


def _commit() -> dict:
    """{"commit": HEAD of the checkout this package runs from (None outside a git checkout),
    "uncommitted_changes": whether tracked files differ from it (None when unknown)}."""
    import subprocess

    here = Path(__file__).resolve().parent

    def git(*args):
        try:
            r = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "uncommitted_changes": None if status is None else status != ""}


def _stamps(paths: list[Path]) -> dict[str, int | None]:
    """{path: modification time in ns, None when missing}: a stage that did work changed one."""
    return {str(p): p.stat().st_mtime_ns if p.exists() else None for p in paths}


def _stage_files(pcfg: PipelineConfig, train_cfg, eval_cfg, tunes: list[str]) -> dict[str, list[Path]]:
    """The files each stage (re)writes when it does work, and leaves alone when it reuses what is there:
    the testbed manifest, a training run's train_results.json, an export's omnimem_export.json and
    adapter, every eval cell's metrics.json."""
    from omnimem_train.eval.grid import METRICS, cell_dir, grid_cells

    def cells(cfg):
        return [cell_dir(cfg, c) / METRICS for c in grid_cells(cfg.eval)]

    files = {"testbed": [Path(pcfg.testbed.out) / "manifest.jsonl"]}
    if not pcfg.uses_shipped_base:
        first = curriculum_config(pcfg)
        if first is not None:
            files["curriculum"] = [Path(first.output_dir) / TRAIN_RESULTS]
        files["train"] = [Path(train_cfg.output_dir) / TRAIN_RESULTS]
    files["eval"] = cells(eval_cfg)
    for name in tunes:
        tune_cfg, tuned_eval = tune_configs(pcfg, train_cfg, eval_cfg, name)
        files[name] = [Path(tune_cfg.output_dir) / "adapter_model.safetensors",
                       Path(tuned_eval.model_name_or_path) / "omnimem_export.json"]
        files[f"{name}_eval"] = cells(tuned_eval)
    return files


def _read_runs(path: Path) -> list[dict]:
    """The runs an earlier pipeline.json records, oldest first. A record from before the history was
    kept (one run, no "runs") becomes that run, dated by the file's modification time."""
    from datetime import datetime

    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(old, dict):
        return []
    if isinstance(old.get("runs"), list):
        return [r for r in old["runs"] if isinstance(r, dict)]
    if "times" not in old:
        return []
    date = datetime.fromtimestamp(path.stat().st_mtime).astimezone().isoformat(timespec="seconds")
    return [{"date": date, "commit": None, "uncommitted_changes": None, "times": old["times"], "reused": None}]


def _budget_words(row: dict) -> str:
    f = row.get("budget_fraction")
    if row.get("budget") is not None:
        return f"{row['budget']} audio+visual tokens per layer"
    if f:
        inv = 1 / f
        share = f"1/{inv:.0f}" if abs(inv - round(inv)) < 1e-9 else f"{f:g}"
        return f"{share} of each clip's audio+visual tokens"
    return "full memory"


def _diff_str(diff: float, lo: float, hi: float) -> str:
    diff, lo, hi = (x + 0.0 for x in (diff, lo, hi))  # -0.0 prints as +0.000
    return f"{diff:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _tuned_diffs(summary: dict, tuned: dict) -> dict[str, tuple]:
    """{training-free cell name: (tuned cell row, PairedDiff tuned - free, answers changed)} for the
    cells both evaluated, paired on the same clips."""
    from omnimem_train.eval.grid import budget_str
    from omnimem_train.eval.paired import pair_predictions, paired_bootstrap

    key = lambda c: (c["scorer"], budget_str(c), c.get("allocation"))  # noqa: E731
    free = {key(c): c for c in summary["cells"]}
    out = {}
    for c in tuned["cells"]:
        b = free.get(key(c))
        if b is None or b["cell"] not in summary["predictions"] or c["cell"] not in tuned["predictions"]:
            continue
        x, y = pair_predictions(tuned["predictions"][c["cell"]], summary["predictions"][b["cell"]])
        out[b["cell"]] = (c, paired_bootstrap(x, y),
                          _changed_choices(summary["predictions"][b["cell"]], tuned["predictions"][c["cell"]]))
    return out


def format_results(summary: dict, tunes: list[str]) -> str:
    """One line per cell of the grid: its training-free accuracy [95% CI] and, for each tuning run that
    evaluated the cell, the tuned (exported) accuracy and the paired difference tuned - training-free."""
    from omnimem_train.eval.grid import accuracy_str

    diffs = {name: _tuned_diffs(summary, summary[name]) for name in tunes}
    w = max([12, *(len(c["cell"]) for c in summary["cells"])])
    head = f"{'cell':<{w}} {'training-free':<22}"
    for name in tunes:
        head += f" {name + ' (exported)':<22} {name + ' - free [95% CI]':<26}"
    lines = [head.rstrip(), "-" * len(head.rstrip())]
    for c in summary["cells"]:
        line = f"{c['cell']:<{w}} {accuracy_str(c):<22}"
        for name in tunes:
            if c["cell"] in diffs[name]:
                tuned, r, _ = diffs[name][c["cell"]]
                line += f" {accuracy_str(tuned):<22} {_diff_str(r.diff, r.lo, r.hi):<26}"
            else:
                line += f" {'':<22} {'':<26}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def explain(summary: dict, tunes: list[str], steps: dict[str, int] | None = None) -> list[str]:
    """What the results say, in sentences computed from them: OmniMem (the calibrated allocation + the
    omnimem score) against full memory and against each baseline of its budget (a claim only where
    the paired 95% CI excludes 0), then what each tuning run changed."""
    from omnimem_train.eval.grid import METHOD

    steps = steps or {}
    rows = {c["cell"]: c for c in summary["cells"]}
    methods = [c for c in summary["cells"] if (c["scorer"], c.get("allocation")) == METHOD]
    comparisons = summary.get("comparisons") or []
    says = []
    if not methods:
        full = next((c for c in summary["cells"] if c["scorer"] == "full"), None)
        rest = [c for c in summary["cells"] if c["scorer"] != "full"]
        if full is not None and rest:
            best = max(rest, key=lambda c: c["accuracy"])
            says.append(f"The grid has no OmniMem cell (calibrated allocation + omnimem score); its best compressed "
                        f"cell, {best['cell']}, scores {best['accuracy']:.3f} where full memory scores "
                        f"{full['accuracy']:.3f}.")
    for m in methods:
        vs_full = next((r for r in comparisons if r["a"] == "full" and r["b"] == m["cell"]), None)
        if vs_full is not None:
            lo, hi = vs_full["ci"]
            gap = ("loses accuracy to full memory" if lo > 0 else "scores above full memory" if hi < 0 else
                   "shows no significant difference from full memory (the paired CI includes 0)")
            says.append(f"OmniMem at {_budget_words(m)} ({m['cell']}) scores {m['accuracy']:.3f} where full memory "
                        f"scores {vs_full['acc_a']:.3f}: it {gap}, {_diff_str(-vs_full['diff'], -hi, -lo)} "
                        f"on {vs_full['n']} paired clips.")
        others = [r for r in comparisons if r["a"] == m["cell"] and rows.get(r["b"], {}).get("scorer") != "full"]
        worse = [r for r in others if r["ci"][1] < 0]
        better = [r for r in others if r["ci"][0] > 0]
        level = [r for r in others if r["ci"][0] <= 0 <= r["ci"][1]]
        if worse:
            says.append("OmniMem loses to " + ", ".join(f"{r['b']} ({_diff_str(r['diff'], *r['ci'])})" for r in worse)
                        + " at the same budget (the paired CI lies below 0): on this model and testbed "
                        + ("that method keeps" if len(worse) == 1 else "those methods keep")
                        + " more of what the questions ask about.")
        if better:
            says.append("OmniMem beats " + ", ".join(f"{r['b']} ({_diff_str(r['diff'], *r['ci'])})" for r in better)
                        + ".")
        if level:
            says.append("No significant difference from " + ", ".join(r["b"] for r in level)
                        + " (the paired CIs include 0).")
    for name in tunes:
        unchanged = []
        for cell, (_tuned, r, changed) in _tuned_diffs(summary, summary[name]).items():
            is_method = (rows[cell]["scorer"], rows[cell].get("allocation")) == METHOD
            if not is_method and rows[cell]["scorer"] != "full":
                continue
            what = "OmniMem" if is_method else "full memory"
            d = _diff_str(r.diff, r.lo, r.hi)
            if changed == 0:
                unchanged.append((what, r.n))
            elif r.lo > 0:
                says.append(f"{name} raised {what} by {d} (the CI excludes 0; {changed} of {r.n} answers changed).")
            elif r.hi < 0:
                says.append(f"{name} lowered {what} by {d} (the CI excludes 0; {changed} of {r.n} answers changed)"
                            + ("" if is_method else ": the adapter was trained under the budget, not for the full "
                                                    "context") + ".")
            else:
                says.append(f"{name} did not change {what} measurably: {d} includes 0 ({changed} of {r.n} answers "
                            f"changed, gains and losses about even). That can happen when {steps.get(name, '?')} "
                            f"steps move the option scores little, or when {r.n} clips cannot resolve a difference "
                            f"smaller than about {max(r.hi - r.diff, r.diff - r.lo):.2f}.")
        if unchanged:
            says.append(f"{name} changed none of the answers of {' or '.join(w for w, _ in unchanged)} "
                        f"({unchanged[0][1]} clips), so the accuracies are the same by construction: in "
                        f"{steps.get(name, '?')} steps the adapter moved the option scores too little to flip any.")
    return says


def format_ending(summary: dict, tunes: list[str], steps: dict[str, int], times: dict, reused: dict,
                  record: Path, n_runs: int, eval_dir: str) -> str:
    """The block the pipeline ends on: the result table, where the plots and summaries are, the wall
    time (reused stages marked) and what the numbers mean."""
    import textwrap

    lines = ["", "=" * 30 + " result " + "=" * 30, format_results(summary, tunes), ""]
    lines.append(f"plot:        {summary['plot']}")
    lines.append(f"summary:     {Path(eval_dir) / 'summary.md'} (per question type, paired comparisons)")
    for name in tunes:
        lines.append(f"{name + ':':<12} {summary[name]['plot']}, {Path(summary[name]['plot']).with_name('summary.md')}")
    marked = [f"{k[:-2]} {v:.0f} s" + (" (reused)" if reused.get(k[:-2]) else "") for k, v in times.items()]
    lines.append("wall time:   " + ", ".join(marked))
    lines.append(f"record:      {record} (run {n_runs}; every run's times, commit and reused stages)")
    says = explain(summary, tunes, steps)
    if says:
        lines.append("meaning:")
        lines += [textwrap.fill(s, 100, initial_indent="  - ", subsequent_indent="    ") for s in says]
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
