"""load_serving_config: a model's omnimem_memory.json sits between the defaults and the recipe;
recipe, settings and key=value override it; relative budget files resolve against the model."""

import json
import shutil
from pathlib import Path

import pytest

from omnimem_train.config import Config, MemoryConfig, load_config, load_serving_config
from omnimem_train.errors import ConfigError
from omnimem_train.models.builtin import resolve_builtin

SAVED = {"compression": "streaming", "scorer": "omnimem", "budget": 256, "group_size": 512, "lam": 0.05,
         "rho": 3.0}


@pytest.fixture
def model(tmp_path):
    """A saved tiny Omni model folder with memory settings next to it."""
    path = Path(shutil.copytree(resolve_builtin("tiny-omni")[0], tmp_path / "model"))
    (path / "omnimem_memory.json").write_text(json.dumps(SAVED))
    return path


def _write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_serving_config(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_the_model_memory_settings_are_used(model):
    cfg, note = load_serving_config(None, [f"model_name_or_path={model}"])
    m = cfg.memory
    assert (m.scorer, m.budget, m.group_size, m.lam, m.rho) == ("omnimem", 256, 512, 0.05, 3.0)
    assert m.window == MemoryConfig().window  # not in the file: the default
    assert str(model / "omnimem_memory.json") in note
    assert "scorer=omnimem" in note and "budget=256" in note and "\n" not in note


def test_recipe_settings_and_overrides_win(model, tmp_path):
    recipe = _write(tmp_path / "r.yaml", f"model_name_or_path: {model}\nmemory:\n  group_size: 64\n  lam: 0.5\n")
    cfg, note = load_serving_config(recipe, ["memory.lam=0.25"], settings={"memory": {"rho": 7.0}})
    m = cfg.memory
    assert (m.group_size, m.lam, m.rho) == (64, 0.25, 7.0)  # recipe < settings < key=value
    assert (m.scorer, m.budget) == ("omnimem", 256)  # the rest still from the model
    assert "group_size" not in note and "lam" not in note and "budget=256" in note


def test_a_budget_from_above_replaces_the_models_budget(model):
    cfg, note = load_serving_config(None, [f"model_name_or_path={model}", "memory.compression_ratio=0.5"])
    assert cfg.memory.compression_ratio == 0.5 and cfg.memory.budget is None  # no "only one of" conflict
    assert "budget=" not in note
    cfg, _ = load_serving_config(None, [f"model_name_or_path={model}", "memory.budget=null"])
    assert cfg.memory.budget is None  # unlimited, as asked


def test_relative_budget_file_resolves_against_the_model(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the model folder
    _write(model / "omnimem_budget.json", [[2, 8]] * 4)
    _write(model / "omnimem_memory.json", {**SAVED, "budget": None, "budget_file": "omnimem_budget.json"})
    cfg, _ = load_serving_config(None, [f"model_name_or_path={model}"])
    assert cfg.memory.budget_file == str(model / "omnimem_budget.json") and cfg.memory.budget is None
    _write(model / "omnimem_memory.json", {**SAVED, "budget": None, "budget_file": "missing.json"})
    message = _error(None, [f"model_name_or_path={model}"])
    assert "omnimem_memory.json" in message and "'budget_file'" in message and "missing.json" in message
    cfg, _ = load_serving_config(None, [f"model_name_or_path={model}", "memory.budget=32"])
    assert cfg.memory.budget == 32 and cfg.memory.budget_file is None  # overridden: never looked at


def test_a_model_trained_without_compression_forces_nothing(model):
    _write(model / "omnimem_memory.json", {**SAVED, "compression": "none"})
    cfg, note = load_serving_config(None, [f"model_name_or_path={model}"])
    assert cfg.memory == MemoryConfig()
    assert "compression: none" in note and "no memory settings" in note


def test_no_settings_file_is_plain_load_config(model):
    (model / "omnimem_memory.json").unlink()
    assert load_serving_config(None, [f"model_name_or_path={model}"]) == (
        load_config(None, [f"model_name_or_path={model}"]), None)
    assert load_serving_config() == (Config(), None)  # builtin:tiny-omni: never resolved or built here


@pytest.mark.parametrize("content,needles", [
    ("{not json", ["not valid JSON"]),
    ("[1, 2]", ["JSON object"]),
    ({**SAVED, "scorr": "x"}, ["unknown key 'memory.scorr'", "did you mean 'memory.scorer'"]),
    ({**SAVED, "group_size": "big"}, ["'memory.group_size'", "'big'"]),
    ({**SAVED, "compression": "lots"}, ["'compression'", "'lots'"]),
    ({**SAVED, "budget_fraction": 0.0625}, ["only one of budget"]),
    ({**SAVED, "budget": None, "compression_ratio": 0.5, "budget_file": "b.json"}, ["no budget_file with"]),
])
def test_bad_settings_file_is_a_one_line_error_naming_it(model, content, needles):
    if "budget_file" in str(content):
        _write(model / "b.json", [[1, 1]] * 4)
    _write(model / "omnimem_memory.json", content)
    message = _error(None, [f"model_name_or_path={model}"])
    assert str(model / "omnimem_memory.json") in message
    for needle in needles:
        assert needle in message


def test_trainer_written_settings_round_trip(model):
    from omnimem_train.config.load import memory_settings

    trained = load_config(None, ["memory.scorer=recency", "memory.budget=96", "memory.sink_tokens=2",
                                 "memory.group_seconds=4"])
    _write(model / "omnimem_memory.json", memory_settings(trained))
    cfg, _ = load_serving_config(None, [f"model_name_or_path={model}"])
    assert cfg.memory == trained.memory
