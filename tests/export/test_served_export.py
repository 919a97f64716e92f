"""An export answers as its run was trained: its omnimem_memory.json carries the run's answer format
and system prompt, and `infer --model EXPORT`, `eval --model EXPORT` and `open_session(EXPORT)` use
them with no flag; an explicit setting still wins."""

import json

import pytest

from data_prep.synthetic import write_clip
from omnimem_train.commands.cli import main
from omnimem_train.config import load_config, save_config
from omnimem_train.config.load import memory_settings
from omnimem_train.config.served import write_memory_settings
from tests.export.runs import save_like_trainer

PROMPT = "You watch clips."
ASK = ["--question", "What colour is the square?", "--options", "red", "green", "blue"]


def _completion_run(folder, omnimem_home):
    """A LoRA run folder as the trainer saves it, trained (so its config says) on completion prompts."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMNIMEM_HOME", omnimem_home)
        run = save_like_trainer(folder, "builtin:tiny-omni", budget=40)
    cfg = load_config(run / "config.yaml", ["generation.answer_format=completion",
                                            f"generation.system_prompt={PROMPT}"])
    save_config(cfg, run)
    write_memory_settings(run, memory_settings(cfg))
    return run


@pytest.fixture(scope="module")
def export(tmp_path_factory, omnimem_home):
    run = _completion_run(tmp_path_factory.mktemp("completion") / "run", omnimem_home)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMNIMEM_HOME", omnimem_home)
        assert main(["export", str(run)]) == 0
    return run / "merged"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return str(write_clip(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=2.0, width=56, height=56, fps=4))


def _infer(export, clip, run_dir, capsys, *extra):
    code = main(["infer", "--model", str(export), "--video", clip, *ASK, f"output_dir={run_dir}", "device=cpu",
                 *extra])
    err = capsys.readouterr().err
    assert code == 0, err
    cfg = load_config(run_dir / "config.yaml")
    scores = json.loads((run_dir / "infer_result.json").read_text())["option_scores"]
    return cfg, scores, err


def test_the_export_carries_the_trained_prompt(export):
    served = json.loads((export / "omnimem_memory.json").read_text())
    assert served["generation"] == {"answer_format": "completion", "system_prompt": PROMPT}
    assert served["budget"] == 40


def test_infer_answers_in_the_trained_format_with_no_flag(export, clip, tmp_path, capsys):
    cfg, scores, err = _infer(export, clip, tmp_path / "plain", capsys)
    assert (cfg.generation.answer_format, cfg.generation.system_prompt) == ("completion", PROMPT)
    note = next(line for line in err.splitlines() if "omnimem_memory.json" in line)
    assert "generation.answer_format=completion" in note
    _, explicit, _ = _infer(export, clip, tmp_path / "explicit", capsys, "generation.answer_format=completion")
    assert scores == explicit  # the same prompt, so the same scores
    cfg, letter, _ = _infer(export, clip, tmp_path / "letter", capsys, "generation.answer_format=letter")
    assert cfg.generation.answer_format == "letter" and letter != scores  # an explicit setting wins


def test_the_session_api_uses_the_trained_prompt(export):
    from omnimem_train.serving import open_session

    session = open_session(str(export), audio=False, device="cpu")
    assert (session.config.generation.answer_format, session.config.generation.system_prompt) == (
        "completion", PROMPT)
    assert "generation.answer_format=completion" in session.settings_note
    session.close()
    session = open_session(str(export), audio=False, device="cpu", generation={"answer_format": "option"})
    assert session.config.generation.answer_format == "option"
    session.close()


def test_eval_cells_use_the_trained_prompt(export, export_manifest, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["eval", "--model", str(export), f"eval.manifest={export_manifest}", f"output_dir={out}",
                 "eval.split=train", "eval.scorers=[]", "eval.per_head_scorers=[]", "eval.budget_fractions=[]",
                 "device=cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    cell = load_config(out / "cells" / "full" / "config.yaml")
    assert (cell.generation.answer_format, cell.generation.system_prompt) == ("completion", PROMPT)
    note = next(line for line in err.splitlines() if "omnimem_memory.json" in line)
    assert "generation.answer_format=completion" in note
    assert "memory.budget=" not in note  # every cell sets its own budget: the model's is not in effect


def test_a_run_saved_without_the_prompt_takes_it_from_its_config(tmp_path, omnimem_home):
    from omnimem_train.export.source import find_source

    run = _completion_run(tmp_path / "run", omnimem_home)
    served = json.loads((run / "omnimem_memory.json").read_text())
    del served["generation"]  # a settings file written before the prompt was part of it
    (run / "omnimem_memory.json").write_text(json.dumps(served))
    assert find_source(run).memory["generation"] == {"answer_format": "completion", "system_prompt": PROMPT}
    (run / "omnimem_memory.json").unlink()  # no settings file at all: all from config.yaml
    source = find_source(run)
    assert source.memory["generation"]["answer_format"] == "completion" and source.memory["budget"] == 40
