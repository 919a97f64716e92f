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
    # the job ends on the result table, where the plots and summaries are, and what the numbers mean
    ending = out.getvalue()[out.getvalue().rindex("= result ="):]
    assert ending.splitlines()[1].startswith("cell ") and "tune - free [95% CI]" in ending
    assert f"plot:        {tmp_path / 'eval' / 'accuracy_vs_budget.png'}" in ending
    assert f"{tmp_path / 'eval' / 'summary.md'}" in ending
    assert f"{tmp_path / 'eval' / 'tuned' / 'accuracy_vs_budget.png'}" in ending
    assert f"{tmp_path / 'eval' / 'tuned' / 'summary.md'}" in ending and "meaning:" in ending
    assert "OmniMem at 1/16 of each clip's audio+visual tokens (omnimem-f0.0625-calibrated)" in ending
    assert "wall time:" in ending and "(reused)" not in ending
    # pipeline.json: the latest run at the top level, every run in "runs"
    assert len(record["runs"]) == 1 and record["runs"][0]["times"] == record["times"]
    assert set(record["runs"][0]) >= {"date", "commit", "times", "reused", "cells_evaluated"}
    assert not any(record["reused"].values()) and record["cells_evaluated"]["eval"] == 7

    weights = (tmp_path / "base" / "model.safetensors").stat().st_mtime_ns
    out2 = io.StringIO()
    again = run_pipeline(_cfg(tmp_path), out=out2)
    assert "base model: reusing" in out2.getvalue() and "tune: reusing" in out2.getvalue()
    assert "control: reusing" in out2.getvalue()
    history = json.loads((tmp_path / "eval" / "pipeline.json").read_text())
    assert [r["times"] for r in history["runs"]] == [record["times"], history["times"]]  # the measured run is kept
    assert all(history["reused"].values()) and history["cells_evaluated"] == {"eval": 0, "tune_eval": 0,
                                                                             "control_eval": 0}
    wall = out2.getvalue()[out2.getvalue().rindex("wall time:"):].splitlines()[0]
    assert wall.count("(reused)") == 5 and "total" in wall and "record:" in out2.getvalue()  # all but the total
    # a calibrated profile measured again since (newer than the tuned adapter): the tuning is stale
    os.utime(profile)
    out3 = io.StringIO()
    run_pipeline(_cfg(tmp_path), out=out3)
    assert "tune: LoRA on the base model" in out3.getvalue() and "control: reusing" in out3.getvalue()
    third = json.loads((tmp_path / "eval" / "pipeline.json").read_text())
    assert len(third["runs"]) == 3 and third["runs"][0]["times"] == record["times"]
    assert (third["reused"]["testbed"], third["reused"]["tune"], third["reused"]["control"]) == (True, False, True)
    assert third["cells_evaluated"]["eval"] == 2  # the calibrated cells: they read the profile
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
    with pytest.raises(ConfigError, match="eval.recipe: required"):
        stage_configs(load_config(None, [f"testbed.out={tmp_path / 'tb'}"], schema=PipelineConfig))
    assert main(["pipeline", "recipes/testbed/pipeline_small.yaml", "testbed.trian=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "trian" in err[0]


def _family(tmp_path, recipe, *extra):
    return load_config(recipe, [f"testbed.out={tmp_path / 'tb'}", *extra], schema=PipelineConfig)


def test_model_family_is_validated(tmp_path, capsys):
    from omnimem_train.commands.pipeline import MODEL_FAMILIES

    assert PipelineConfig().model_family == "qwen2_5_omni" and set(MODEL_FAMILIES) == {"qwen2_5_omni", "vsalmonn2plus"}
    for good in MODEL_FAMILIES:
        assert _family(tmp_path, "recipes/testbed/pipeline_small.yaml", f"model_family={good}").model_family == good
    for bad in ("qwen3", "Qwen2_5_Omni", "", "[vsalmonn2plus]", "null"):
        with pytest.raises(ConfigError, match=r"model_family.*expected one of qwen2_5_omni \| vsalmonn2plus"):
            _family(tmp_path, "recipes/testbed/pipeline_small.yaml", f"model_family={bad}")
    assert main(["pipeline", "recipes/testbed/pipeline_small.yaml", "model_family=qwen3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model_family" in err[0] and "qwen3" in err[0]


def test_each_family_picks_its_base_model_and_base_recipe(tmp_path):
    """Unset base_model / train.recipe: the family's. Qwen2.5-Omni: the shipped base, trained by
    base_full.yaml; video-SALMONN 2+: none ships, so base_vsalmonn2plus.yaml trains
    builtin:testbed-vsalmonn2plus and the evaluation takes its output. Same testbed either way."""
    omni = _family(tmp_path, None, "eval.recipe=recipes/eval/testbed.yaml")
    assert (omni.model_family, omni.shipped_base, omni.uses_shipped_base) == ("qwen2_5_omni", "assets/testbed-base", True)
    train_cfg, eval_cfg = stage_configs(omni)
    assert omni.train_recipe == "recipes/testbed/base_full.yaml" and train_cfg.model_name_or_path == "builtin:testbed-omni"
    assert eval_cfg.model_name_or_path == "assets/testbed-base"

    vs = _family(tmp_path, None, "eval.recipe=recipes/eval/testbed.yaml", "model_family=vsalmonn2plus")
    assert vs.shipped_base is None and not vs.uses_shipped_base  # trained even without train_base
    train_cfg, eval_cfg = stage_configs(vs)
    assert vs.train_recipe == "recipes/testbed/base_vsalmonn2plus.yaml"
    assert train_cfg.model_name_or_path == "builtin:testbed-vsalmonn2plus"
    assert eval_cfg.model_name_or_path == train_cfg.output_dir == "checkpoints/testbed-vsalmonn2plus-base"
    assert train_cfg.dataset == eval_cfg.eval.manifest == str(tmp_path / "tb" / "manifest.jsonl")
    # trained as the Omni base is: full context, every LLM weight, frozen cached towers, completion prompts
    assert (train_cfg.compression, train_cfg.finetuning_type, train_cfg.train_encoders) == ("none", "full", "none")
    assert train_cfg.cache_encoder_outputs and train_cfg.generation.answer_format == eval_cfg.generation.answer_format == "completion"
    assert (train_cfg.media.video_fps, train_cfg.media.max_pixels) == (2.0, 78400)
    # an explicit train.recipe or base_model still wins over the family's
    own = _family(tmp_path, None, "eval.recipe=recipes/eval/testbed.yaml", "model_family=vsalmonn2plus",
                  "train.recipe=recipes/testbed/base_vsalmonn2plus.yaml", "train.overrides=[model_name_or_path=builtin:tiny-vsalmonn2plus]")
    assert stage_configs(own)[0].model_name_or_path == "builtin:tiny-vsalmonn2plus"


def test_the_vsalmonn2plus_pipeline_recipe(tmp_path):
    """recipes/testbed/pipeline_vsalmonn2plus.yaml: the family's base, the same testbed design and
    questions as the Omni runs, full memory + OmniMem + the two strongest baselines at 1/16."""
    pcfg = load_config("recipes/testbed/pipeline_vsalmonn2plus.yaml", [], schema=PipelineConfig)
    small = load_config("recipes/testbed/pipeline_small.yaml", [], schema=PipelineConfig)
    assert pcfg.model_family == "vsalmonn2plus" and not pcfg.uses_shipped_base and pcfg.tune.recipe is None
    assert pcfg.testbed.spec() == small.testbed.spec() and pcfg.testbed.seed == small.testbed.seed
    assert pcfg.testbed.train_questions == small.testbed.train_questions == 4
    train_cfg, eval_cfg = stage_configs(pcfg)
    assert train_cfg.model_name_or_path == "builtin:testbed-vsalmonn2plus"
    assert eval_cfg.model_name_or_path == train_cfg.output_dir
    assert eval_cfg.output_dir != stage_configs(small)[1].output_dir  # never mixes with the Omni results
    assert (eval_cfg.eval.scorers, eval_cfg.eval.per_head_scorers) == (["omnimem", "value_norm"], ["snapkv"])
    assert (eval_cfg.eval.budget_fractions, eval_cfg.eval.allocations) == ([0.0625], ["calibrated"])


def test_a_base_of_another_family_is_refused(tmp_path):
    """model_family must match the model evaluated: the shipped base, or the model the train stage
    starts from. pipeline_small.yaml pins the Omni base and recipe, so switching its family alone is
    refused before anything runs instead of evaluating an Omni model as video-SALMONN 2+."""
    from omnimem_train.commands.pipeline import family_of

    with pytest.raises(ConfigError, match="model_family: vsalmonn2plus, but the base_model assets/testbed-base "
                                          "is a qwen2_5_omni model"):
        stage_configs(_family(tmp_path, "recipes/testbed/pipeline_small.yaml", "model_family=vsalmonn2plus"))
    with pytest.raises(ConfigError, match="train stage's model_name_or_path builtin:testbed-omni is a qwen2_5_omni"):
        stage_configs(_family(tmp_path, "recipes/testbed/pipeline_small.yaml", "model_family=vsalmonn2plus",
                              "train_base=true"))
    with pytest.raises(ConfigError, match="builtin:testbed-vsalmonn2plus is a vsalmonn2plus model"):
        stage_configs(_family(tmp_path, "recipes/testbed/pipeline_vsalmonn2plus.yaml", "model_family=qwen2_5_omni",
                              "train_base=true", "train.recipe=recipes/testbed/base_vsalmonn2plus.yaml"))
    # how a model's family is read: built-in names, config.json model_type (a release's qwen2_5_vl
    # with an audio_config is video-SALMONN 2+; without one it is plain Qwen2.5-VL, no family here)
    assert family_of("builtin:testbed-omni") == family_of("builtin:tiny-omni") == "qwen2_5_omni"
    assert family_of("builtin:testbed-vsalmonn2plus") == family_of("builtin:tiny-vsalmonn2plus") == "vsalmonn2plus"
    assert family_of("builtin:tiny-omnimem-qwen3vl") is None and family_of("builtin:tiny-llama") is None
    assert family_of("assets/testbed-base") == "qwen2_5_omni"
    for name, cfg, want in (("ours", {"model_type": "vsalmonn2plus"}, "vsalmonn2plus"),
                            ("release", {"model_type": "qwen2_5_vl", "audio_config": {}}, "vsalmonn2plus"),
                            ("plain-vl", {"model_type": "qwen2_5_vl"}, None),
                            ("qwen3vl", {"model_type": "omnimem_qwen3vl"}, None)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
        assert family_of(str(tmp_path / name)) == want, name
    assert family_of(str(tmp_path / "missing")) is None


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


def _summary(free: dict, tuned: dict | None = None, n_tuned: str = "tune") -> dict:
    """A pipeline summary from {cell name: [correct per clip]} (the grid's cell names), with the grid's
    paired comparisons, and (given `tuned`) the tuned evaluation of some of those cells."""
    from omnimem_train.eval.grid import comparison_pairs
    from omnimem_train.eval.paired import compare_cells

    def rows_preds(cells):
        rows, preds = [], {}
        for name, correct in cells.items():
            parts = name.split("-")
            full = parts[0] == "full"
            rows.append({"cell": name, "scorer": parts[0], "budget": None,
                         "budget_fraction": None if full else float(parts[1][1:]),
                         "allocation": None if full else parts[2], "accuracy": sum(correct) / len(correct),
                         "ci": [0.0, 1.0], "n": len(correct)})
            preds[name] = [{"id": f"c{i}", "choice": "A" if ok else "B", "correct": ok} for i, ok in enumerate(correct)]
        return rows, preds

    rows, preds = rows_preds(free)
    summary = {"cells": rows, "predictions": preds, "plot": "eval/accuracy_vs_budget.png",
               "comparisons": compare_cells(preds, comparison_pairs(rows))}
    if tuned is not None:
        t_rows, t_preds = rows_preds(tuned)
        summary[n_tuned] = {"cells": t_rows, "predictions": t_preds, "plot": "eval/tuned/accuracy_vs_budget.png"}
    return summary


def test_the_ending_says_what_the_numbers_mean(tmp_path):
    """The sentences are computed from the results: a loss to a baseline is named, a tuning whose paired
    CI includes 0 says so and why that can happen, a tuning that changed no answer says it is equal by
    construction, and claims are made only where the paired CI excludes 0."""
    from omnimem_train.commands.pipeline import explain, format_ending, format_results

    n = 40
    method, base = "omnimem-f0.0625-calibrated", "value_norm-f0.0625-calibrated"
    free = {"full": [True] * n, method: [True] * 20 + [False] * 20, base: [True] * 36 + [False] * 4,
            "snapkv.per_head-f0.0625-calibrated": [True] * 21 + [False] * 19}
    # tuning flips 2 of OmniMem's answers each way (no measurable change) and costs full memory 12
    tuned = {"full": [True] * 28 + [False] * 12, method: [False, False] + [True] * 18 + [True, True] + [False] * 18}
    summary = _summary(free, tuned)
    says = explain(summary, ["tune"], {"tune": 300})
    text = " ".join(says)
    assert f"OmniMem at 1/16 of each clip's audio+visual tokens ({method}) scores 0.500 where full memory " \
           "scores 1.000: it loses accuracy to full memory, -0.500" in text
    assert f"OmniMem loses to {base} (-0.400" in text and "that method keeps" in text
    assert "No significant difference from snapkv.per_head-f0.0625-calibrated (the paired CIs include 0)" in text
    assert "tune did not change OmniMem measurably: +0.000 [" in text and "includes 0 (4 of 40 answers changed" in text
    assert "300 steps" in text and "40 clips cannot resolve a difference" in text
    assert "tune lowered full memory by -0.300" in text and "not for the full context" in text
    assert "beats" not in text

    table = format_results(summary, ["tune"])
    row = next(line for line in table.splitlines() if line.startswith(method))
    assert "0.500" in row and "+0.000 [" in row
    assert next(line for line in table.splitlines() if line.startswith(base)).split()[1] == "0.900"

    # nothing changed: equal by construction, not "no significant difference"
    same = explain(_summary(free, {"full": free["full"], method: free[method]}), ["tune"], {"tune": 2})
    assert any("tune changed none of the answers of full memory or OmniMem (40 clips)" in s and "in 2 steps" in s
               for s in same)
    # a gain whose CI excludes 0 is called one
    gain = explain(_summary(free, {method: [True] * 36 + [False] * 4}), ["tune"], {"tune": 300})
    assert any(s.startswith("tune raised OmniMem by +0.400 [") for s in gain)

    ending = format_ending(summary, ["tune"], {"tune": 300}, {"eval_s": 2.0, "tune_s": 3.0, "total_s": 5.0},
                           {"eval": True, "tune": False}, tmp_path / "pipeline.json", 2, "eval")
    assert "plot:        eval/accuracy_vs_budget.png" in ending and "eval/summary.md" in ending
    assert "tune:        eval/tuned/accuracy_vs_budget.png, eval/tuned/summary.md" in ending
    assert "wall time:   eval 2 s (reused), tune 3 s, total 5 s" in ending and "(run 2;" in ending


def test_an_older_pipeline_record_becomes_the_first_run(tmp_path):
    """A pipeline.json written before the history was kept (one run, no "runs") is kept as the first
    run, not overwritten by the next (a reuse run's seconds would replace the measured ones)."""
    from omnimem_train.commands.pipeline import _read_runs

    path = tmp_path / "pipeline.json"
    assert _read_runs(path) == []
    path.write_text(json.dumps({"times": {"eval_s": 4724.0, "total_s": 4724.0}, "base_model": "m"}))
    runs = _read_runs(path)
    assert len(runs) == 1 and runs[0]["times"] == {"eval_s": 4724.0, "total_s": 4724.0}
    assert runs[0]["commit"] is None and runs[0]["date"]
    path.write_text(json.dumps({"times": {}, "runs": [{"times": {"total_s": 1.0}}, "junk"]}))
    assert _read_runs(path) == [{"times": {"total_s": 1.0}}]
    path.write_text("{not json")
    assert _read_runs(path) == []
