"""Messages about a config value name where it came from: the recipe file, the `override
'key=value'` or the model's settings file, and the dotted key, also for the checks made after
loading (the scorer exists, the budget file is there) and for values that only look empty."""

import dataclasses
import json

import pytest

from omnimem_train.config import load_config, load_serving_config
from omnimem_train.config.schema import MemoryConfig
from omnimem_train.errors import ConfigError
from omnimem_train.memory.registry import build_policy


def _error(call, *args) -> str:
    with pytest.raises(ConfigError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# --- empty override values ---------------------------------------------------------------------


@pytest.mark.parametrize(("override", "expected"), [
    ("memory.budget=", "override 'memory.budget=': key 'memory.budget': expected int or null, got an empty "
                       "value (write memory.budget=null for null)"),
    ("memory.budget= ", "override 'memory.budget= ': key 'memory.budget': expected int or null, got an empty "
                        "value (write memory.budget=null for null)"),
    ("seed=", "override 'seed=': key 'seed': expected int, got an empty value"),
    ("memory.rho=", "override 'memory.rho=': key 'memory.rho': expected float, got an empty value"),
    ("eval.budgets=", "override 'eval.budgets=': key 'eval.budgets': expected list, got an empty value"),
    ("memory.budget_file=", "override 'memory.budget_file=': key 'memory.budget_file': expected a budget JSON "
                            "path or null, got ''"),
])
def test_an_empty_override_value_is_not_null(override, expected):
    assert _error(load_config, None, [override]) == expected


def test_null_still_unsets_and_strings_keep_their_own_checks():
    assert load_config(None, ["memory.budget=5", "memory.budget=null"]).memory.budget is None
    assert "key 'output_dir'" in _error(load_config, None, ["output_dir="])
    assert load_config(None, ["deepspeed="]).deepspeed == ""  # no DeepSpeed, as `none`


# --- deepspeed --------------------------------------------------------------------------------


def test_unknown_deepspeed_name_names_its_source(tmp_path):
    expected = "key 'deepspeed': expected zero2 | zero3 | none | a path to a DeepSpeed JSON file, got 'zero9'"
    assert _error(load_config, None, ["deepspeed=zero9"]) == f"override 'deepspeed=zero9': {expected}"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("deepspeed: zero9\n")
    assert _error(load_config, recipe) == f"{recipe}: {expected}"


@pytest.mark.parametrize("value", ["zero2", "ZERO3", "none", "null", "configs/ds.json", "ds.json", "/abs/ds"])
def test_deepspeed_names_and_paths_load(value):
    load_config(None, [f"deepspeed={value}"])  # a path's existence is checked when training starts


def test_deepspeed_short_names_are_the_shipped_configs():
    from omnimem_train.config.schema import DEEPSPEED_CONFIGS
    from omnimem_train.train.deepspeed import SHORT_NAMES

    assert set(DEEPSPEED_CONFIGS) == set(SHORT_NAMES)


# --- checks made after loading -------------------------------------------------------------------


def test_unknown_scorer_names_the_recipe_or_override(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("memory:\n  scorer: nope\n  budget: 8\n")
    cfg = load_config(recipe)
    assert _error(build_policy, cfg.memory, 4).startswith(f"{recipe}: key 'memory.scorer': unknown scorer 'nope'; "
                                                          "known: frame_drop, full, ")
    cfg = load_config(recipe, ["memory.scorer=h3o"])
    assert _error(build_policy, cfg.memory, 4).startswith("override 'memory.scorer=h3o': key 'memory.scorer': "
                                                          "unknown scorer 'h3o'")


def test_a_section_built_elsewhere_names_the_key_alone(tmp_path):
    assert _error(build_policy, MemoryConfig(scorer="nope"), 4).startswith("memory.scorer: unknown scorer 'nope'")
    # a copy with another scorer is not attributed to the recipe that set the first one
    cfg = load_config(None, ["memory.scorer=omnimem"])
    copy = dataclasses.replace(cfg.memory, scorer="h3o")
    assert _error(build_policy, copy, 4).startswith("memory.scorer: unknown scorer 'h3o'")


def test_per_head_names_its_source(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("memory:\n  scorer: omnimem\n  budget: 8\n  per_head: true\n")
    assert _error(build_policy, load_config(recipe).memory, 4).startswith(
        f"{recipe}: key 'memory.per_head': 'omnimem' selects one token set for all KV heads")


def test_missing_budget_file_names_the_override(tmp_path):
    missing = tmp_path / "missing.json"
    cfg = load_config(None, ["memory.scorer=recency", "memory.budget=8", f"memory.budget_file={missing}"])
    assert _error(build_policy, cfg.memory, 4) == (
        f"override 'memory.budget_file={missing}': key 'memory.budget_file': {missing}: budget file not found")


def test_scorer_from_the_model_settings_names_that_file(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    settings = model / "omnimem_memory.json"
    settings.write_text(json.dumps({"compression": "streaming", "scorer": "nope", "budget": 8}))
    cfg, _ = load_serving_config(None, [f"model_name_or_path={model}"])
    assert _error(build_policy, cfg.memory, 4).startswith(f"{settings}: key 'memory.scorer': unknown scorer 'nope'")


def test_invalid_model_settings_json_gives_its_line_and_column(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    settings = model / "omnimem_memory.json"
    settings.write_text('{"scorer": "omnimem",\n "budget": ,\n "rho": 5}\n')  # the stray comma: line 2, column 12
    assert _error(load_serving_config, None, [f"model_name_or_path={model}"]) == \
        f"{settings}: not valid JSON (line 2, column 12: Expecting value)"
