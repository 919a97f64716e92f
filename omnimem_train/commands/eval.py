"""`omnimem-train eval RECIPE.yaml [--model DIR] [key=value ...]`: accuracy under memory budgets.

Runs the grid eval.scorers x (eval.budgets, eval.budget_fractions) x eval.allocations (uniform,
calibrated, blind: equal memory; the calibrated profile is measured on the manifest's train clips)
over the multiple-choice samples of eval.manifest (split eval.split; the first ceil(eval.fraction
x N) of them), plus full memory as the upper bound, loading the model once. Writes per cell
<output_dir>/cells/<cell>/{predictions.jsonl, metrics.json, config.yaml}, and at the top
summary.json and summary.md (with the paired comparisons of the method against every other cell),
accuracy_vs_budget.png and config.yaml (layout: omnimem_train/eval/grid.py).
Re-running skips finished cells. The model is any model_name_or_path: builtin:<name>, a
checkpoint or an exported model directory; the settings saved next to it (omnimem_memory.json:
memory settings and the prompt it was trained on, generation.answer_format / system_prompt) apply
below the recipe, except the scorer and budget each cell sets.
"""

from __future__ import annotations

# The memory.* keys every cell sets for itself (`eval.grid.cell_config`): the model's values for
# them are not in effect, so the note leaves them out.
CELL_KEYS = tuple(f"memory.{k}" for k in ("scorer", "budget", "budget_fraction", "budget_file", "compression_ratio",
                                          "modality_aware", "per_head"))


def cmd_eval(args) -> int:
    import sys

    from omnimem_train.config import load_serving_config
    from omnimem_train.eval.grid import check_scorers, format_table, run_eval
    from omnimem_train.utils.paths import check_writable_dir

    flags = [f"model_name_or_path={args.model}"] if getattr(args, "model", None) else []
    # Cells set scorer and budget; the rest of memory.* (group_size, lam, rho, ...) and the prompt
    # the model was trained on (generation.*) come from the model's omnimem_memory.json unless the
    # recipe or the command line sets them.
    cfg, note = load_serving_config(args.recipe, flags + args.overrides, set_later=CELL_KEYS)
    check_scorers(cfg.eval.scorers)  # before output_dir is created: a typo leaves nothing behind
    check_scorers(cfg.eval.per_head_scorers, per_head=True)
    check_writable_dir(cfg.output_dir)
    if note:
        print(f"note: {note}", file=sys.stderr)
    summary = run_eval(cfg)
    print(format_table(summary["cells"]))
    print(f"summary: {summary['summary']}")
    print(f"plot:    {summary['plot']}")
    return 0


def add_parser(sub) -> None:
    """Register `eval` on the `omnimem-train` subparsers."""
    p = sub.add_parser("eval", help="accuracy of scorers x budgets x allocations (uniform / calibrated / blind, plus "
                                    "full memory) over a manifest; per-cell predictions, metrics, paired "
                                    "comparisons and a plot")
    p.add_argument("recipe", nargs="?", help="recipe YAML (e.g. recipes/eval/tiny_omni.yaml)")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. eval.fraction=0.1)")
    p.add_argument("--model", help="model directory or builtin:<name> (sets model_name_or_path; the folder's "
                                   "omnimem_memory.json, if any, supplies memory.* and generation.* below the "
                                   "recipe)")
    p.set_defaults(func=cmd_eval)
