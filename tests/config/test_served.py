"""The served settings a model folder carries (`config/served.py`): the memory settings and the prompt
its weights were trained on (generation.answer_format, generation.system_prompt), applied below the
recipe; the note lists only the model's settings in effect."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from omnimem_train.config import GenerationConfig, MemoryConfig, load_config, load_serving_config
from omnimem_train.config.served import served_settings
from omnimem_train.errors import ConfigError
from omnimem_train.models.builtin import resolve_builtin

PROMPT = "You watch clips."
SERVED = {"compression": "streaming", "scorer": "omnimem", "compression_ratio": 0.9375, "lam": 0.5,
          "group_size": 64, "generation": {"answer_format": "completion", "system_prompt": PROMPT}}


@pytest.fixture
def model(tmp_path):
    path = Path(shutil.copytree(resolve_builtin("tiny-omni")[0], tmp_path / "model"))
    _write(path, SERVED)
    return path


def _write(model: Path, data) -> None:
    (model / "omnimem_memory.json").write_text(data if isinstance(data, str) else json.dumps(data))


def test_the_trained_prompt_is_served(model):
    cfg, note = load_serving_config(None, [f"model_name_or_path={model}"])
    assert (cfg.generation.answer_format, cfg.generation.system_prompt) == ("completion", PROMPT)
    assert cfg.generation.max_new_tokens == GenerationConfig().max_new_tokens  # a serving choice: not saved
    assert (cfg.memory.scorer, cfg.memory.compression_ratio, cfg.memory.group_size) == ("omnimem", 0.9375, 64)
    assert "generation.answer_format=completion" in note and f"generation.system_prompt={PROMPT!r}" in note
    assert "memory.compression_ratio=0.9375" in note and "\n" not in note


def test_recipe_settings_and_overrides_win(model, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model_name_or_path: {model}\ngeneration:\n  answer_format: option\n")
    cfg, note = load_serving_config(recipe)
    assert (cfg.generation.answer_format, cfg.generation.system_prompt) == ("option", PROMPT)
    assert "answer_format" not in note and "system_prompt" in note
    cfg, _ = load_serving_config(recipe, ["generation.answer_format=letter"])
    assert cfg.generation.answer_format == "letter"  # key=value above the recipe
    cfg, _ = load_serving_config(settings={"model_name_or_path": str(model), "generation": {"system_prompt": ""}})
    assert (cfg.generation.answer_format, cfg.generation.system_prompt) == ("completion", "")


def test_the_note_lists_only_the_settings_in_effect(model):
    cfg, note = load_serving_config(None, [f"model_name_or_path={model}", "memory.scorer=full"])
    assert cfg.memory.scorer == "full"
    assert "compression_ratio" not in note and "0.9375" not in note and "budget=" not in note
    assert "memory.lam=" not in note and "memory.scorer=omnimem" not in note
    assert "memory.group_size=64" in note and "generation.answer_format=completion" in note  # still read
    # the caller's own per-cell settings (the eval grid) are not listed either
    _, note = load_serving_config(None, [f"model_name_or_path={model}"],
                                  set_later=("memory.scorer", "memory.compression_ratio"))
    assert "scorer" not in note and "compression_ratio" not in note and "memory.lam=0.5" in note


def test_a_file_without_generation_still_loads(model):
    _write(model, {k: v for k, v in SERVED.items() if k != "generation"})
    cfg, note = load_serving_config(None, [f"model_name_or_path={model}"])
    assert cfg.generation == GenerationConfig() and cfg.memory.scorer == "omnimem"
    assert "generation." not in note


def test_a_model_trained_without_compression_still_gets_its_prompt(model):
    _write(model, {**SERVED, "compression": "none"})
    cfg, note = load_serving_config(None, [f"model_name_or_path={model}"])
    assert cfg.memory == MemoryConfig() and cfg.generation.answer_format == "completion"
    assert "compression: none" in note and "no memory settings" in note
    assert "generation.answer_format=completion" in note and "0.9375" not in note


def test_the_shipped_base_serves_in_its_trained_format():
    base = "assets/testbed-base"
    trained = yaml.safe_load(Path(base, "train_config.yaml").read_text())["generation"]  # as it trained
    cfg, note = load_serving_config(None, [f"model_name_or_path={base}"])
    assert cfg.generation.answer_format == trained["answer_format"] == "completion"
    assert cfg.generation.system_prompt == trained["system_prompt"]
    assert cfg.memory == MemoryConfig()  # trained with compression: none
    assert "generation.answer_format=completion" in note


def test_served_settings_round_trip(model):
    trained = load_config(None, ["memory.scorer=recency", "memory.budget=96", "generation.answer_format=cloze",
                                 f"generation.system_prompt={PROMPT}", "generation.max_new_tokens=5"])
    settings = served_settings(trained)
    assert settings["generation"] == {"answer_format": "cloze", "system_prompt": PROMPT}
    _write(model, settings)
    cfg, _ = load_serving_config(None, [f"model_name_or_path={model}"])
    assert cfg.memory == trained.memory
    assert (cfg.generation.answer_format, cfg.generation.system_prompt) == ("cloze", PROMPT)


@pytest.mark.parametrize("generation,needles", [
    ("completion", ["key 'generation'", "JSON object"]),
    ({"answer_format": "prose"}, ["'generation.answer_format'", "'prose'"]),
    ({"answer_fromat": "completion"}, ["unknown key 'generation.answer_fromat'"]),
])
def test_a_bad_generation_section_is_one_line_naming_the_file(model, generation, needles):
    _write(model, {**SERVED, "generation": generation})
    with pytest.raises(ConfigError) as info:
        load_serving_config(None, [f"model_name_or_path={model}"])
    message = str(info.value)
    assert "\n" not in message and str(model / "omnimem_memory.json") in message
    for needle in needles:
        assert needle in message
