"""`omnimem-train infer --model DIR` answers as the model was trained (the served settings in
DIR/omnimem_memory.json, answer format included), and its note lists only the settings in effect."""

import json
import shutil

import pytest

from data_prep.synthetic import write_clip
from omnimem_train.commands.cli import main
from omnimem_train.config import load_config

BASE = "assets/testbed-base"  # trained on completion prompts, its served file says so


@pytest.fixture(scope="module")
def testbed_clip(tmp_path_factory):
    """One clip of the testbed's seed-0 test split, with its question and options."""
    from data_prep.testbed import TestbedSpec, generate_testbed
    from omnimem_train.data.manifest import read_manifest

    out = tmp_path_factory.mktemp("testbed")
    spec = TestbedSpec(seconds=4.0, n_visual_events=2, n_audio_events=2, box_fraction=0.5)
    generate_testbed(out, 0, 0, 1, spec, seed=0, workers=1)
    return read_manifest(out / "manifest.jsonl", "test")[0]


def _infer(sample, run, capsys, *extra):
    code = main(["infer", "--model", BASE, "--video", sample.video, "--question", sample.question,
                 "--options", *sample.options, f"output_dir={run}", "device=cpu", "media.max_pixels=78400", *extra])
    err = capsys.readouterr().err
    assert code == 0, err
    return load_config(run / "config.yaml"), json.loads((run / "infer_result.json").read_text()), err


def test_the_shipped_base_answers_in_its_trained_format_with_no_flag(testbed_clip, tmp_path, capsys):
    cfg, result, err = _infer(testbed_clip, tmp_path / "plain", capsys)
    assert cfg.generation.answer_format == "completion"
    assert "generation.answer_format=completion" in err
    _, explicit, _ = _infer(testbed_clip, tmp_path / "explicit", capsys, "generation.answer_format=completion")
    assert result["option_scores"] == explicit["option_scores"]
    cfg, letter, _ = _infer(testbed_clip, tmp_path / "letter", capsys, "generation.answer_format=letter")
    assert cfg.generation.answer_format == "letter" and letter["option_scores"] != result["option_scores"]


def test_the_note_under_full_memory_lists_no_budget(tmp_path, capsys):
    from omnimem_train.models.builtin import resolve_builtin

    model = shutil.copytree(resolve_builtin("tiny-omni")[0], tmp_path / "model")
    (model / "omnimem_memory.json").write_text(json.dumps(
        {"compression": "streaming", "scorer": "omnimem", "compression_ratio": 0.9375, "lam": 0.5, "rho": 3.0,
         "group_size": 64, "generation": {"answer_format": "completion"}}))
    clip = str(write_clip(tmp_path / "clip.mp4", seconds=2.0, width=56, height=56, fps=4))
    run = tmp_path / "run"
    code = main(["infer", "--model", str(model), "--video", clip, "--scorer", "full", f"output_dir={run}",
                 "generation.max_new_tokens=2", "device=cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    note = next(line for line in err.splitlines() if "omnimem_memory.json" in line)
    for unused in ("compression_ratio", "0.9375", "budget=", "memory.lam", "memory.rho", "memory.scorer=omnimem"):
        assert unused not in note, note
    assert "memory.group_size=64" in note and "generation.answer_format=completion" in note
    cfg = load_config(run / "config.yaml")
    assert cfg.memory.scorer == "full" and cfg.generation.answer_format == "completion"
