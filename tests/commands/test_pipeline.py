"""Smoke version of the testbed pipeline (`omnimem-train pipeline`), end to end on real files:
generate a tiny testbed, train the base model with full memory (full fine-tuning, `compression:
none`, frozen cached towers), evaluate full memory and two scorers at one budget under the uniform,
calibrated and blind allocations, then tune at the calibrated budget and run the full-context
control. It checks the pieces fit together and that a re-run reuses what is finished, not accuracy
(that needs the real-length run, docs/testbed.md)."""

import io
import json
import os

import pytest
import torch

from omnimem_train.commands.cli import main
from omnimem_train.commands.pipeline import PipelineConfig, run_pipeline, stage_configs, tune_configs
from omnimem_train.config import load_config
from omnimem_train.errors import ConfigError
from omnimem_train.models.builtin import build_tiny_model


def _cfg(tmp_path, *extra):
    return load_config("recipes/testbed/pipeline_small.yaml", [
        f"testbed.out={tmp_path / 'testbed'}", "testbed.train=4", "testbed.test=4", "train_base=true",
        f"train.overrides=[output_dir={tmp_path / 'base'},max_steps=2,per_device_train_batch_size=2,save_steps=100]",
        f'eval.overrides=[output_dir={tmp_path / "eval"},"eval.scorers=[omnimem,recency]",'
        '"eval.per_head_scorers=[]","eval.budget_fractions=[0.0625]","eval.allocations=[uniform,calibrated,blind]",'
        'eval.calibration_clips=2]',
        f"tune.overrides=[output_dir={tmp_path / 'tuned'},max_steps=2,per_device_train_batch_size=2]",
        "control.recipe=recipes/testbed/tune_control.yaml",
        f"control.overrides=[output_dir={tmp_path / 'control'},max_steps=2,per_device_train_batch_size=2]",
        'control.eval_overrides=["eval.scorers=[omnimem]","eval.budget_fractions=[0.0625]",'
        '"eval.allocations=[calibrated]"]',
        *extra], schema=PipelineConfig)


def test_generate_train_evaluate_then_reuse(tmp_path):
    out = io.StringIO()
    summary = run_pipeline(_cfg(tmp_path), out=out)
    assert "base model: training" in out.getvalue()
    assert (tmp_path / "base" / "train_results.json").exists()
    assert (tmp_path / "testbed" / "manifest.jsonl").exists() and (tmp_path / "base" / "model.safetensors").exists()
    rows = [json.loads(line) for line in (tmp_path / "testbed" / "manifest.jsonl").read_text().splitlines()]
    assert sum(r["split"] == "train" for r in rows) == 16 and sum(r["split"] == "test" for r in rows) == 4
    # train_questions: 4 -> each training clip asked every type; rows stream clip by clip, packed
    assert len({r["video"] for r in rows if r["split"] == "train"}) == 4
    cells = {(c["scorer"], c.get("allocation")) for c in summary["cells"]}
    assert any(s == "full" for s, _ in cells)
    assert {(s, a) for s in ("omnimem", "recency") for a in ("uniform", "calibrated", "blind")} <= cells
    profile = tmp_path / "eval" / "calibration" / "budget_profile.json"
    assert profile.is_file() and "paired comparisons" in out.getvalue()
    assert all(c["n"] == 4 for c in summary["cells"])
    assert (tmp_path / "eval" / "accuracy_vs_budget.png").stat().st_size > 1000
    record = json.loads((tmp_path / "eval" / "pipeline.json").read_text())
    assert "full" in out.getvalue() and "plot:" in out.getvalue()

    # step 4: budget-aware LoRA on the base, exported (merged + verified), evaluated at its budget
    assert (tmp_path / "tuned" / "adapter_model.safetensors").exists()
    export = json.loads((tmp_path / "tuned" / "merged" / "omnimem_export.json").read_text())
    assert export["method"] == "lora-merge"
    # trained at exactly the budget and allocation it is evaluated at: 1/16, the eval stage's profile
    memory = json.loads((tmp_path / "tuned" / "merged" / "omnimem_memory.json").read_text())
    assert (memory["scorer"], memory["budget_fraction"], memory["compression_ratio"]) == ("omnimem", 0.0625, None)
    shipped = json.loads((tmp_path / "tuned" / "merged" / memory["budget_file"]).read_text())["layers"]
    assert shipped == json.loads(profile.read_text())["layers"]
    tuned = summary["tune"]["cells"]
    assert [(c["scorer"], c["budget_fraction"], c["allocation"]) for c in tuned if c["scorer"] != "full"] == [
        ("omnimem", 0.0625, "calibrated")]
    tuned_cell = load_config(tmp_path / "eval" / "tuned" / "cells" / "omnimem-f0.0625-calibrated" / "config.yaml")
    assert tuned_cell.memory.budget_file == str(profile)  # evaluated with the profile it was tuned with
    control = summary["control"]["cells"]
    assert [c["cell"] for c in control] == ["full", "omnimem-f0.0625-calibrated"]
    assert "training-free" in out.getvalue() and "tune (exported)" in out.getvalue()
    assert "control (exported)" in out.getvalue() and "changed answers" in out.getvalue()
    assert set(record["times"]) == {"testbed_s", "train_s", "eval_s", "tune_s", "control_s", "total_s"}

    weights = (tmp_path / "base" / "model.safetensors").stat().st_mtime_ns
    out2 = io.StringIO()
    again = run_pipeline(_cfg(tmp_path), out=out2)
    assert "base model: reusing" in out2.getvalue() and "tune: reusing" in out2.getvalue()
    assert "control: reusing" in out2.getvalue()
    # a calibrated profile measured again since (newer than the tuned adapter): the tuning is stale
    os.utime(profile)
    out3 = io.StringIO()
    run_pipeline(_cfg(tmp_path), out=out3)
    assert "tune: LoRA on the base model" in out3.getvalue() and "control: reusing" in out3.getvalue()
    assert (tmp_path / "base" / "model.safetensors").stat().st_mtime_ns == weights
    assert [c["accuracy"] for c in again["cells"]] == [c["accuracy"] for c in summary["cells"]]


def test_changed_training_config_trains_again(tmp_path):
    from omnimem_train.commands.pipeline import finished_training

    train_cfg, _ = stage_configs(_cfg(tmp_path))
    assert not finished_training(train_cfg)  # nothing there yet
    (tmp_path / "base").mkdir()
    from omnimem_train.config.load import save_config

    save_config(train_cfg, tmp_path / "base")
    (tmp_path / "base" / "model.safetensors").write_bytes(b"x")
    assert not finished_training(train_cfg)  # weights but no train_results.json: interrupted
    (tmp_path / "base" / "train_results.json").write_text("{}")
    assert finished_training(train_cfg)
    # A new run with this config started (config rewritten) after that run finished: not finished.
    os.utime(tmp_path / "base" / "train_results.json", ns=(1, 1))
    assert not finished_training(train_cfg)
    (tmp_path / "base" / "train_results.json").write_text("{}")
    assert finished_training(train_cfg)
    changed, _ = stage_configs(_cfg(tmp_path, "train.overrides=[output_dir=" + str(tmp_path / "base") + ",max_steps=3]"))
    assert not finished_training(changed)


def test_stages_are_wired_to_the_generated_manifest(tmp_path):
    pcfg = _cfg(tmp_path)
    train_cfg, eval_cfg = stage_configs(pcfg)
    manifest = str(tmp_path / "testbed" / "manifest.jsonl")
    assert train_cfg.dataset == manifest and eval_cfg.eval.manifest == manifest
    assert eval_cfg.model_name_or_path == train_cfg.output_dir == str(tmp_path / "base")
    assert train_cfg.generation.answer_format == eval_cfg.generation.answer_format == "completion"
    tune_cfg, tuned_eval = tune_configs(pcfg, train_cfg, eval_cfg)
    assert tune_cfg.model_name_or_path == train_cfg.output_dir and tune_cfg.dataset == manifest
    assert tuned_eval.model_name_or_path == str(tmp_path / "tuned" / "merged")
    assert tuned_eval.output_dir == str(tmp_path / "eval" / "tuned")  # named after the tuning run
    assert tune_cfg.memory.budget_file == tuned_eval.eval.calibration_profile == str(
        tmp_path / "eval" / "calibration" / "budget_profile.json")
    control_cfg, control_eval = tune_configs(pcfg, train_cfg, eval_cfg, "control")
    assert control_cfg.compression == "none" and control_cfg.max_steps == tune_cfg.max_steps == 2
    assert control_eval.eval.calibration_profile == tuned_eval.eval.calibration_profile
    assert tune_cfg.generation.answer_format == tuned_eval.generation.answer_format == "completion"


def test_shipped_base_is_used_unless_train_base(tmp_path):
    pcfg = load_config("recipes/testbed/pipeline_small.yaml", [f"testbed.out={tmp_path / 'tb'}"],
                       schema=PipelineConfig)
    assert pcfg.uses_shipped_base
    train_cfg, eval_cfg = stage_configs(pcfg)
    assert eval_cfg.model_name_or_path == "assets/testbed-base"
    assert tune_configs(pcfg, train_cfg, eval_cfg)[0].model_name_or_path == "assets/testbed-base"
    retrain = load_config("recipes/testbed/pipeline_small.yaml", [f"testbed.out={tmp_path / 'tb'}", "train_base=true"],
                          schema=PipelineConfig)
    assert stage_configs(retrain)[1].model_name_or_path == stage_configs(retrain)[0].output_dir
    with pytest.raises(ConfigError, match="base_model: .*not a model folder"):
        stage_configs(load_config("recipes/testbed/pipeline_small.yaml", [f"base_model={tmp_path}"],
                                  schema=PipelineConfig))
    with pytest.raises(ConfigError, match="tune.calibrated: needs the eval stage's calibrated profile"):
        stage_configs(load_config("recipes/testbed/pipeline_small.yaml",
                                  ['eval.overrides=["eval.allocations=[uniform]"]'], schema=PipelineConfig))


def test_bad_pipeline_input_is_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="train.recipe"):
        stage_configs(load_config(None, ["eval.recipe=recipes/eval/testbed.yaml"], schema=PipelineConfig))
    assert main(["pipeline", "recipes/testbed/pipeline_small.yaml", "testbed.trian=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "trian" in err[0]


def _with_curriculum(tmp_path, *extra):
    return _cfg(tmp_path, "curriculum.recipe=recipes/testbed/base_full.yaml",
                f"curriculum.overrides=[output_dir={tmp_path / 'first'},max_steps=1,warmup_ratio=0,per_device_train_batch_size=2,"
                '"save_steps=100","dataset_question_types=[temporal_order]"]', *extra)


def test_curriculum_stage_is_wired_before_the_train_stage(tmp_path):
    from omnimem_train.commands.pipeline import curriculum_config

    pcfg = _with_curriculum(tmp_path)
    first = curriculum_config(pcfg)
    train_cfg, eval_cfg = stage_configs(pcfg)
    assert first.dataset == train_cfg.dataset == str(tmp_path / "testbed" / "manifest.jsonl")
    assert first.dataset_question_types == ["temporal_order"] and train_cfg.dataset_question_types == []
    assert train_cfg.model_name_or_path == first.output_dir == str(tmp_path / "first")
    assert eval_cfg.model_name_or_path == train_cfg.output_dir
    assert curriculum_config(_cfg(tmp_path)) is None  # pipeline_small has none
    assert stage_configs(_cfg(tmp_path))[0].model_name_or_path == "builtin:testbed-omni"
    with pytest.raises(ConfigError, match="curriculum.overrides: output_dir"):
        stage_configs(_with_curriculum(tmp_path, f"train.overrides=[output_dir={tmp_path / 'first'}]"))


def test_pipeline_trains_the_curriculum_stage_then_from_it(tmp_path):
    """Both stages train and are reused on a re-run; a newer curriculum run makes the train stage
    train again (it started from the older weights)."""
    from safetensors.torch import load_file

    pcfg = _with_curriculum(tmp_path, "tune.recipe=null", "control.recipe=null",
                            f'eval.overrides=[output_dir={tmp_path / "eval"},"eval.scorers=[recency]",'
                            '"eval.budget_fractions=[0.0625]","eval.allocations=[uniform]"]')
    out = io.StringIO()
    summary = run_pipeline(pcfg, out=out)
    log = out.getvalue()
    assert log.index("curriculum stage: training") < log.index("base model: training")
    assert set(summary["times"]) == {"testbed_s", "curriculum_s", "train_s", "eval_s", "total_s"}
    first = load_file(str(tmp_path / "first" / "model.safetensors"))
    start, _ = build_tiny_model("testbed-omni")
    saved = first["model.layers.0.self_attn.q_proj.weight"]  # the checkpoint's name of the LLM's layer 0
    initial = start.state_dict()["model.language_model.layers.0.self_attn.q_proj.weight"]
    assert saved.shape == initial.shape and not torch.equal(saved, initial)  # the curriculum stage trained
    assert load_config(tmp_path / "base" / "config.yaml").model_name_or_path == str(tmp_path / "first")

    again = io.StringIO()
    run_pipeline(pcfg, out=again)
    assert "curriculum stage: reusing" in again.getvalue() and "base model: reusing" in again.getvalue()
    done = tmp_path / "first" / "train_results.json"
    later = (tmp_path / "base" / "train_results.json").stat().st_mtime_ns + 10**9
    os.utime(done, ns=(later, later))
    third = io.StringIO()
    run_pipeline(pcfg, out=third)
    assert "curriculum stage: reusing" in third.getvalue() and "base model: training" in third.getvalue()


def test_side_by_side_pairs_the_clips_and_says_why_when_nothing_changed():
    from omnimem_train.commands.pipeline import format_side_by_side

    def cell(name, correct):
        scorer = name.split("-")[0]
        row = {"cell": name, "scorer": scorer, "budget": None, "budget_fraction": None if scorer == "full" else 0.0625,
               "allocation": None if scorer == "full" else "calibrated", "accuracy": sum(correct) / len(correct),
               "ci": [0.0, 1.0]}
        preds = [{"id": f"c{i}", "choice": "A" if ok else "B", "correct": ok} for i, ok in enumerate(correct)]
        return row, preds

    name = "omnimem-f0.0625-calibrated"
    before = [cell("full", [True] * 8), cell(name, [True, False] * 4)]
    same = [cell("full", [True] * 8), cell(name, [True, False] * 4)]
    text = format_side_by_side([r for r, _ in before], [r for r, _ in same], "tune",
                               {r["cell"]: p for r, p in before}, {r["cell"]: p for r, p in same})
    assert "0 of 8" in text and f"note: tune changed no answer in full, {name}" in text
    better = [cell("full", [True] * 8), cell(name, [True] * 8)]
    text = format_side_by_side([r for r, _ in before], [r for r, _ in better], "tune",
                               {r["cell"]: p for r, p in before}, {r["cell"]: p for r, p in better})
    row = next(line for line in text.splitlines() if line.startswith("omnimem"))
    assert "+0.500" in row and "4 of 8" in row and f"changed no answer in full, {name}" not in text
