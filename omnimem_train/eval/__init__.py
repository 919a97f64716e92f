"""Evaluation harness (`omnimem-train eval RECIPE.yaml`): a grid of memory scorers x budgets x
{modality-aware, modality-blind}, plus full memory as the upper bound, over a manifest of
multiple-choice samples. See `grid` for the output layout, `metrics` for what is measured.

    from omnimem_train.config import load_config
    from omnimem_train.eval import run_eval

    summary = run_eval(load_config("recipes/eval/tiny_omni.yaml", ["eval.fraction=0.25"]))
"""

from omnimem_train.eval.grid import Cell, cell_config, format_table, grid_cells, read_predictions, run_eval
from omnimem_train.eval.metrics import accuracy, accuracy_with_ci, compute_metrics, per_type, wilson_interval

__all__ = [
    "Cell",
    "accuracy",
    "accuracy_with_ci",
    "cell_config",
    "compute_metrics",
    "format_table",
    "grid_cells",
    "per_type",
    "read_predictions",
    "run_eval",
    "wilson_interval",
]
