"""Smoke version of the testbed pipeline, end to end on real files: generate a tiny testbed, train
the base model with full memory (full fine-tuning, `compression: none`), then evaluate full memory
and two scorers at one budget, modality-aware and -blind. It checks the pieces fit together, not
accuracy (that needs the real-length run)."""

import json

from data_prep.testbed import TestbedSpec, generate_testbed
from omnimem_train.config import load_config
from omnimem_train.eval import run_eval
from omnimem_train.train.run import run_training


def test_generate_train_evaluate(tmp_path):
    spec = TestbedSpec(seconds=4.0, n_visual_events=2, n_audio_events=2)
    manifests = generate_testbed(tmp_path / "testbed", n_train=4, n_val=0, n_test=4, spec=spec, seed=0)
    combined = tmp_path / "testbed" / "manifest.jsonl"
    assert combined.exists() and manifests

    base = tmp_path / "base"
    trainer = run_training(load_config("recipes/testbed/base_full.yaml", [
        f"dataset={combined}", f"output_dir={base}", "max_steps=2", "per_device_train_batch_size=2",
        "report_to=none", "save_steps=100"]))
    assert trainer.state.global_step == 2 and (base / "model.safetensors").exists()

    run_eval(load_config("recipes/eval/tiny_omni.yaml", [
        f"model_name_or_path={base}", f"eval.manifest={combined}", "eval.split=test", f"output_dir={tmp_path / 'eval'}",
        "eval.scorers=[omnimem,recency]", "eval.budgets=[64]", "eval.budget_fractions=[]",
        "media.max_pixels=78400", "memory.group_size=128"]))
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    cells = {(c["scorer"], c.get("modality")) for c in summary["cells"]}
    assert ("full", None) in cells or any(c[0] == "full" for c in cells)
    assert {("omnimem", "aware"), ("omnimem", "blind"), ("recency", "aware"), ("recency", "blind")} <= cells
    assert all(c["n"] == 4 for c in summary["cells"])
    assert (tmp_path / "eval" / "accuracy_vs_budget.png").stat().st_size > 1000
