"""Every command-line option says what it does, and a bad memory method is reported before any file is
written: no demo clip, no output folder, no generated testbed."""

import argparse

from omnimem_train.commands.cli import build_parser, main


def _parsers(parser: argparse.ArgumentParser, path: str = "omnimem-train"):
    """(name, parser) of the program and every subcommand, and (name, action) of each subcommand entry."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for entry in action._choices_actions:
                yield f"{path} {entry.dest}", entry
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_every_option_and_subcommand_has_help():
    missing = []
    for name, parser in _parsers(build_parser()):
        if not isinstance(parser, argparse.ArgumentParser):  # a subcommand's entry in its parent's list
            if not (parser.help or "").strip():
                missing.append(name)
            continue
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if action.help != argparse.SUPPRESS and not (action.help or "").strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"options without help text: {missing}"
    assert len(list(_parsers(build_parser()))) > 10  # the walk reached the subcommands


def test_infer_with_an_unknown_scorer_writes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["infer", "--scorer", "nope", f"output_dir={run}"]) == 2  # no --video: the demo clip's case
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown scorer 'nope'" in err
    assert not run.exists()


def test_eval_with_an_unknown_scorer_writes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["eval", "recipes/eval/tiny_omni.yaml", f"output_dir={run}", "eval.scorers=[omnimem,nope]"]) == 2
    err = capsys.readouterr().err
    assert "eval.scorers: unknown scorer 'nope'" in err and "Traceback" not in err
    assert not run.exists()


def _pipeline(tmp_path, eval_overrides: str, tune: str = "") -> str:
    recipe = tmp_path / "pipeline.yaml"
    recipe.write_text(f"""testbed: {{out: {tmp_path / 'tb'}, train: 4, test: 4}}
base_model: assets/testbed-base
eval:
  recipe: recipes/eval/testbed.yaml
  overrides: [output_dir={tmp_path / 'eval'}, {eval_overrides}]
{tune}""")
    return str(recipe)


def test_pipeline_checks_every_stages_methods_before_generating_the_testbed(tmp_path, capsys):
    recipe = _pipeline(tmp_path, '"eval.scorers=[omnimem,nope]"')
    assert main(["pipeline", recipe]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eval stage: eval.scorers: unknown scorer 'nope'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline.yaml"]  # no testbed, no stage folder
    tune = f"""tune:
  recipe: recipes/testbed/tune_lora.yaml
  calibrated: true
  overrides: [output_dir={tmp_path / 'tuned'}, memory.scorer=omnimen]
"""
    assert main(["pipeline", _pipeline(tmp_path, '"eval.allocations=[calibrated]"', tune)]) == 2
    err = capsys.readouterr().err
    assert "tune stage:" in err and "unknown scorer 'omnimen'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline.yaml"]


def test_a_tuning_stage_may_train_under_a_profile_the_eval_stage_writes(tmp_path):
    from omnimem_train.commands.pipeline import PipelineConfig, _check_folders, stage_configs
    from omnimem_train.config import load_config

    tune = f"""tune:
  recipe: recipes/testbed/tune_lora.yaml
  calibrated: true
  overrides: [output_dir={tmp_path / 'tuned'}]
"""
    pcfg = load_config(_pipeline(tmp_path, '"eval.allocations=[calibrated]"', tune), schema=PipelineConfig)
    train_cfg, eval_cfg = stage_configs(pcfg)
    _check_folders(pcfg, train_cfg, eval_cfg, ["tune"])  # the profile does not exist yet: no error
    assert (tmp_path / "tb").is_dir() and (tmp_path / "tuned").is_dir()
