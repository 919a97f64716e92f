"""`omnimem-train infer`, `calibrate` and `eval` for the video-SALMONN 2+ family's two built-ins
(Qwen2.5-VL: 28-px tokens; Qwen3-VL with DeepStack: 32-px tokens), end to end through
`commands.cli.main`: frames resized to the model's token size, budgets (absolute, relative, from a
calibrated file, a release-format file of layer totals), option scoring, and eval grid cells with
the calibrated allocation at equal memory."""

import contextlib
import io
import json
from pathlib import Path

import pytest

from data_prep.synthetic import write_clip
from omnimem_train.commands.cli import main
from omnimem_train.config import load_config
from omnimem_train.memory.budgets import fraction_budget, read_budget_file, split_by_rho
from omnimem_train.models.base import Modality

RECIPES = {"tiny-vsalmonn2plus": "recipes/infer/tiny_vsalmonn2plus.yaml",
           "tiny-omnimem-qwen3vl": "recipes/infer/tiny_omnimem_qwen3vl.yaml"}
BUILTINS = list(RECIPES)
CALIBRATE = "recipes/calibrate/tiny_vsalmonn2plus.yaml"
EVAL = "recipes/eval/tiny_vsalmonn2plus.yaml"
N_LAYERS = 4  # both built-ins
# The 12-s 112x112 demo clip at 2 fps: 12 one-second steps of 4x4 tokens (112 px = 4 x 28; for
# Qwen3-VL 112 px is resized to 128 = 4 x 32), and 2 audio tokens per second.
DEMO_VISUAL, DEMO_AUDIO = 12 * 16, 12 * 2
# The 5-s 112x112 clip below: 5 steps of 16 visual tokens, 10 audio tokens.
CLIP_VISUAL, CLIP_AUDIO = 5 * 16, 5 * 2
CAL_TOTAL = 160  # 40 audio+visual tokens per layer on average: fewer than the clip has, so budgets bind


@pytest.fixture(scope="module", autouse=True)
def _env(tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:  # module fixtures run main() too: built-ins go here
        mp.setenv("OMNIMEM_HOME", str(tmp_path_factory.mktemp("omnimem_home")))
        yield
    torch.set_num_threads(threads)


def _main(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _result(run):
    return json.loads((Path(run) / "infer_result.json").read_text())


def _media_per_layer(memory):
    return [(layer["audio"], layer["visual"]) for layer in memory["layers"]]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return str(write_clip(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=5.0, width=112, height=112, fps=8))


@pytest.fixture(scope="module", params=BUILTINS)
def calibrated(request, tmp_path_factory):
    """(built-in, budgets.json) written by `omnimem-train calibrate` with the family's recipe."""
    out = tmp_path_factory.mktemp(f"cal-{request.param}")
    code, stdout, err = _main(["calibrate", CALIBRATE, f"model_name_or_path=builtin:{request.param}",
                               f"output_dir={out}", "device=cpu", "calibration.clip_seconds=4",
                               f"calibration.total={CAL_TOTAL}"])
    assert code == 0, err
    assert f"budgets: {out / 'budgets.json'}" in stdout
    return request.param, out / "budgets.json"


# --- infer -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTINS)
def test_infer_recipe_streams_the_demo_clip_resized_to_the_models_token_size(name, tmp_path):
    """No --video: the generated 112x112 demo clip, resized to multiples of the model's frame_multiple,
    gives 16 visual tokens per second for both; the recipe's budget (96: audio 16, visual 80) binds."""
    code, out, err = _main(["infer", RECIPES[name], f"output_dir={tmp_path}", "device=cpu",
                            "generation.max_new_tokens=3"])
    assert code == 0, err
    assert "streaming the generated demo clip" in err and (tmp_path / "demo_clip.mp4").is_file()
    assert "Q: What happens in this video?" in out and "\nA: " in out
    assert out.strip().splitlines()[-1].startswith("memory: ")
    assert load_config(tmp_path / "config.yaml").model_name_or_path == f"builtin:{name}"
    memory = _result(tmp_path)["memory"]
    text = memory["layers"][0]["text"]
    assert memory["tokens_seen"] - text == DEMO_VISUAL + DEMO_AUDIO  # text is never evicted
    assert _media_per_layer(memory) == [(16, 80)] * N_LAYERS
    code, _, err = _main(["infer", RECIPES[name], f"output_dir={tmp_path}", "device=cpu", "--scorer", "full",
                          "generation.max_new_tokens=1"])
    assert code == 0, err
    assert _media_per_layer(_result(tmp_path)["memory"]) == [(DEMO_AUDIO, DEMO_VISUAL)] * N_LAYERS


@pytest.mark.parametrize("name", BUILTINS)
def test_infer_model_flag_options_and_budget_fraction(name, clip, tmp_path):
    """--model picks the built-in; --options scores each option (the best log-likelihood is the answer);
    --budget-fraction is the stream's own fraction: round(0.125 x 90) = 11 per layer, split by rho."""
    code, out, err = _main(["infer", "--model", f"builtin:{name}", "--video", clip, "--question", "Which colour?",
                            "--options", "red", "green", "blue", "--budget-fraction", "0.125", "--scorer", "omnimem", "--group-size", "24",
                            f"output_dir={tmp_path}", "device=cpu"])
    assert code == 0, err
    result = _result(tmp_path)
    scores = result["option_scores"]
    assert len(scores) == 3 and all(s < 0 for s in scores)
    assert result["choice"] == "ABC"[max(range(3), key=scores.__getitem__)]
    assert f"A: {result['choice']}. " in out and "log-likelihood" in out
    want = fraction_budget(0.125, {Modality.AUDIO: CLIP_AUDIO, Modality.VISUAL: CLIP_VISUAL})
    assert want == 11
    assert _media_per_layer(result["memory"]) == [split_by_rho(want, 5.0)] * N_LAYERS
    saved = load_config(tmp_path / "config.yaml")
    assert (saved.model_name_or_path, saved.memory.budget_fraction, saved.memory.budget) == (
        f"builtin:{name}", 0.125, None)


# --- calibrate -------------------------------------------------------------------------------


def test_calibrate_writes_a_per_layer_budget_file_for_the_model(calibrated):
    name, path = calibrated
    data = json.loads(path.read_text())
    layers = read_budget_file(path, N_LAYERS)  # what memory.budget_file accepts
    assert len(layers) == N_LAYERS and all(isinstance(e, tuple) for e in layers)
    assert sum(a + v for a, v in layers) == CAL_TOTAL == data["total"]
    assert data["model"] == f"builtin:{name}" and data["samples"] == 2
    assert all(0 < a < v for a, v in layers)  # rho 5: visual gets most of every layer
    assert path.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert load_config(path.parent / "config.yaml").model_name_or_path == f"builtin:{name}"


def test_a_calibrated_budget_file_sets_each_layers_memory(calibrated, clip, tmp_path):
    """memory.budget_file alone: absolute budgets; each layer keeps exactly its [audio, visual]
    (every budget is below what the clip has)."""
    name, path = calibrated
    layers = read_budget_file(path, N_LAYERS)
    assert all(a < CLIP_AUDIO and v < CLIP_VISUAL for a, v in layers)
    code, _, err = _main(["infer", RECIPES[name], "--video", clip, f"memory.budget_file={path}", "memory.budget=null",
                          f"output_dir={tmp_path}", "device=cpu", "generation.max_new_tokens=2"])
    assert code == 0, err
    assert _media_per_layer(_result(tmp_path)["memory"]) == list(layers)


@pytest.mark.parametrize("name", BUILTINS)
def test_a_release_budget_file_of_layer_totals_is_accepted(name, clip, tmp_path):
    """The release's form: one int per decoder layer, the layer's audio+visual total."""
    totals = [30, 12, 20, 45]
    path = tmp_path / "release_budgets.json"
    path.write_text(json.dumps(totals))
    code, _, err = _main(["infer", RECIPES[name], "--video", clip, f"memory.budget_file={path}", "memory.budget=null",
                          f"output_dir={tmp_path}", "device=cpu", "generation.max_new_tokens=2"])
    assert code == 0, err
    assert [a + v for a, v in _media_per_layer(_result(tmp_path)["memory"])] == totals
    path.write_text(json.dumps(totals[:3]))
    code, _, err = _main(["infer", RECIPES[name], "--video", clip, f"memory.budget_file={path}",
                          f"output_dir={tmp_path}", "device=cpu"])
    assert code == 2 and err.strip().splitlines()[-1] == f"error: {path}: memory.budget_file: has 3 layers, the model has 4"


# --- eval ------------------------------------------------------------------------------------

CELLS = ["full", "omnimem-f0.25-uniform", "omnimem-f0.25-calibrated", "value_norm-f0.25-uniform",
         "value_norm-f0.25-calibrated"]


def _predictions(cell):
    return [json.loads(line) for line in (cell / "predictions.jsonl").read_text().splitlines() if line.strip()]


def test_eval_grid_with_the_calibrated_allocation(calibrated, tiny_manifest, tmp_path):
    """full + omnimem + value_norm at 1/4 of each clip, uniform and calibrated (the file `calibrate`
    wrote): every prediction is the best-scoring option, the budget is the clip's own quarter, the
    calibrated cells hold exactly the uniform cells' memory, and compressed cells hold less than full."""
    name, profile = calibrated
    code, out, err = _main(["eval", EVAL, "--model", f"builtin:{name}", f"eval.manifest={tiny_manifest}",
                            "eval.split=train", f"eval.calibration_profile={profile}",
                            "eval.scorers=[omnimem,value_norm]", "eval.budget_fractions=[0.25]",
                            "eval.allocations=[uniform,calibrated]", f"output_dir={tmp_path}", "device=cpu"])
    assert code == 0, err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [c["cell"] for c in summary["cells"]] == CELLS and summary["samples"] == 4
    truth = [json.loads(line) for line in Path(tiny_manifest).read_text().splitlines()]
    # 2-s 56x56 clips: 2 steps of 2x2 tokens (56 px = 2 x 28, or resized to 64 = 2 x 32), 4 audio tokens
    media = {Modality.VISUAL: 8, Modality.AUDIO: 4}
    kv = {}
    for cell_name in CELLS:
        cell = tmp_path / "cells" / cell_name
        preds = _predictions(cell)
        metrics = json.loads((cell / "metrics.json").read_text())
        assert [p["id"] for p in preds] == [t["id"] for t in truth]
        for p, t in zip(preds, truth, strict=True):
            assert p["answer"] == t["answer"] and len(p["option_scores"]) == len(t["options"])
            assert p["choice"] == "ABCD"[max(range(len(p["option_scores"])), key=p["option_scores"].__getitem__)]
            assert p["correct"] == (p["choice"] == p["answer"])
            assert p["expected_tokens"] == sum(media.values())
        assert metrics["correct"] == sum(p["correct"] for p in preds) and metrics["n"] == 4
        assert metrics["model"] == f"builtin:{name}"
        kv[cell_name] = [p["retained_kv_bytes"] for p in preds]
        if cell_name == "full":
            continue
        scorer, _, allocation = cell_name.split("-")
        cfg = load_config(cell / "config.yaml")
        assert (cfg.memory.scorer, cfg.memory.budget_fraction) == (scorer, 0.25)
        assert cfg.memory.budget_file == (str(profile) if allocation == "calibrated" else None)
        assert all(p["budget"] == fraction_budget(0.25, media) == 3 for p in preds)
        assert all(c < f for c, f in zip(kv[cell_name], kv["full"], strict=True))
    for scorer in ("omnimem", "value_norm"):  # equal memory: the profile is scaled to the uniform total
        assert kv[f"{scorer}-f0.25-calibrated"] == kv[f"{scorer}-f0.25-uniform"]
    assert "omnimem" in out and "value_norm" in out and "calibrated" in out


def test_eval_measures_its_own_calibrated_profile_on_train_clips(tiny_manifest, tmp_path):
    """Without eval.calibration_profile the grid calibrates the Qwen3-VL built-in (DeepStack) itself."""
    code, _, err = _main(["eval", EVAL, "--model", "builtin:tiny-omnimem-qwen3vl", f"eval.manifest={tiny_manifest}",
                          "eval.split=train", "eval.calibration_profile=null", "eval.scorers=[omnimem]",
                          "eval.budget_fractions=[0.25]", "eval.allocations=[calibrated]", f"output_dir={tmp_path}",
                          "device=cpu"])
    assert code == 0, err
    profile = tmp_path / "calibration" / "budget_profile.json"
    assert "calibrating the allocation on 4 train-split clips" in err
    assert len(read_budget_file(profile, N_LAYERS)) == N_LAYERS
    assert json.loads(profile.read_text())["model"] == "builtin:tiny-omnimem-qwen3vl"
    cell = tmp_path / "cells" / "omnimem-f0.25-calibrated"
    assert load_config(cell / "config.yaml").memory.budget_file == str(profile)
    assert len(_predictions(cell)) == 4
