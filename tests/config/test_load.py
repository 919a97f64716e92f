"""load_config / save_config: defaults -> recipe -> overrides, one-line errors, every recipe loads."""

from pathlib import Path

import pytest

from omnimem_train.config import Config, config_keys, config_to_dict, load_config, save_config
from omnimem_train.errors import ConfigError

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
ALL_RECIPES = sorted(RECIPES.rglob("*.yaml"))


def _write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(recipe=None, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(recipe, overrides)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# --- merging -------------------------------------------------------------------------------


def test_defaults():
    assert load_config() == Config()


def test_recipe_then_overrides(tmp_path):
    recipe = _write(tmp_path, "dtype: bfloat16\nmemory:\n  budget: 128\n  scorer: recency\n")
    cfg = load_config(recipe, ["memory.budget=512", "model_name_or_path=/x"])
    assert cfg.memory.budget == 512  # override beats recipe
    assert cfg.memory.scorer == "recency" and cfg.dtype == "bfloat16"  # recipe beats defaults
    assert cfg.memory.group_size == 1024 and cfg.model_name_or_path == "/x"
    assert isinstance(cfg, Config)


def test_later_override_wins_and_null_unsets():
    cfg = load_config(None, ["memory.budget=1", "memory.budget=2", "memory.group_seconds=2"])
    assert cfg.memory.budget == 2 and cfg.memory.group_seconds == 2.0
    assert load_config(None, ["memory.budget=5", "memory.budget=null"]).memory.budget is None


def test_string_override_keeps_text():
    cfg = load_config(None, ["media.audio=off", "output_dir=runs/a=b", "model_name_or_path=123"])
    assert cfg.media.audio == "off"  # not YAML's False
    assert cfg.output_dir == "runs/a=b" and cfg.model_name_or_path == "123"


def test_empty_recipe_keeps_defaults(tmp_path):
    assert load_config(_write(tmp_path, "# nothing yet\n")) == Config()


def test_custom_schema_extends_config():
    from dataclasses import dataclass, field

    @dataclass
    class TrainConfig(Config):
        lora_rank: int = field(default=8, metadata={"help": "LoRA rank"})

    cfg = load_config(None, ["lora_rank=16", "memory.budget=3"], schema=TrainConfig)
    assert isinstance(cfg, TrainConfig) and cfg.lora_rank == 16 and cfg.memory.budget == 3


def test_required_field_without_value():
    from dataclasses import dataclass

    from omegaconf import MISSING

    @dataclass
    class Needs:
        data_path: str = MISSING

    message = _error_for_schema(Needs, [])
    assert "'data_path'" in message and "missing value" in message
    assert load_config(None, ["data_path=/d"], schema=Needs).data_path == "/d"


def _error_for_schema(schema, overrides) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides, schema=schema)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_overrides_must_be_a_sequence():
    with pytest.raises(TypeError):
        load_config(None, "memory.budget=1")


# --- shipped recipes -------------------------------------------------------------------------


def test_recipes_found():
    assert len(ALL_RECIPES) >= 3, ALL_RECIPES


@pytest.mark.parametrize("path", ALL_RECIPES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_recipe_loads(path):
    if path.name.startswith("pipeline_"):  # pipeline recipes chain stage recipes: check those load too
        from omnimem_train.commands.pipeline import PipelineConfig, stage_configs, tune_configs

        pcfg = load_config(path, schema=PipelineConfig)
        stages = stage_configs(pcfg)
        assert all(isinstance(c, Config) for c in stages + tune_configs(pcfg, *stages))
        return
    assert isinstance(load_config(path), Config)


@pytest.mark.parametrize("path", ALL_RECIPES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_recipe_starts_with_its_command(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    relative = path.relative_to(RECIPES.parent).as_posix()
    assert any(("omnimem-train " in line or "launch.sh " in line) and relative in line for line in header), (
        f"{relative}: the leading comments must show the command that runs it"
    )


def test_shipped_recipe_values():
    tiny = load_config(RECIPES / "infer" / "tiny_omni.yaml")
    assert tiny.model_name_or_path == "builtin:tiny-omni"
    assert (tiny.memory.scorer, tiny.memory.budget, tiny.memory.group_size) == ("omnimem", 256, 256)
    qwen = load_config(RECIPES / "infer" / "qwen2_5_omni_7b.yaml")
    assert (qwen.dtype, qwen.device, qwen.media.video_fps, qwen.media.max_pixels) == (
        "bfloat16",
        "cuda",
        2.0,
        313600,
    )
    assert (qwen.memory.scorer, qwen.memory.budget, qwen.memory.group_size) == ("omnimem", 8192, 16384)
    smol = load_config(RECIPES / "infer" / "smollm2_135m.yaml")
    assert smol.model_name_or_path == "builtin:smollm2-135m" and smol.memory.scorer == "omnimem"


# --- errors ----------------------------------------------------------------------------------


def test_unknown_top_level_key(tmp_path):
    message = _error(_write(tmp_path, "modle_name_or_path: x\n", "typo.yaml"))
    assert "typo.yaml" in message and "'modle_name_or_path'" in message
    assert "did you mean 'model_name_or_path'" in message


def test_unknown_nested_key(tmp_path):
    message = _error(_write(tmp_path, "memory:\n  scorr: recency\n", "nested.yaml"))
    assert "nested.yaml" in message and "unknown key 'memory.scorr'" in message
    assert "did you mean 'memory.scorer'" in message


def test_unknown_key_in_override():
    message = _error(None, ["memory.polcy=recent"])
    assert message.startswith("override 'memory.polcy=recent'") and "'memory.polcy'" in message


def test_wrong_type_in_recipe(tmp_path):
    message = _error(_write(tmp_path, "memory:\n  group_size: abc\n", "types.yaml"))
    assert message == "{}: key 'memory.group_size': expected int, got 'abc'".format(tmp_path / "types.yaml")


def test_wrong_type_in_override():
    message = _error(None, ["memory.group_size=abc"])
    assert message == "override 'memory.group_size=abc': key 'memory.group_size': expected int, got 'abc'"


def test_scalar_for_a_section(tmp_path):
    message = _error(_write(tmp_path, "memory: 5\n", "section.yaml"))
    assert "section.yaml" in message and "key 'memory'" in message


def test_yaml_boolean_for_a_string(tmp_path):
    message = _error(_write(tmp_path, "media:\n  audio: off\n", "bool.yaml"))
    assert "bool.yaml" in message and "'media.audio'" in message and "quote" in message


def test_invalid_choice_names_field(tmp_path):
    message = _error(_write(tmp_path, "dtype: float8\n", "choice.yaml"))
    assert "choice.yaml" in message and "'dtype'" in message and "'float8'" in message
    message = _error(None, ["dtype=float8"])
    assert message.startswith("override 'dtype=float8'") and "'dtype'" in message


def test_invalid_nested_value_names_dotted_key(tmp_path):
    message = _error(_write(tmp_path, "memory:\n  budget: -1\n", "budget.yaml"))
    assert "budget.yaml" in message and "'memory.budget'" in message and "-1" in message


def test_cross_field_error_blames_the_override(tmp_path):
    message = _error(None, ["media.max_pixels=1000"])  # below the default min_pixels
    assert message.startswith("override 'media.max_pixels=1000'") and "'media.min_pixels'" in message


def test_answer_format_choice(tmp_path):
    assert load_config(None, ["generation.answer_format=option"]).generation.answer_format == "option"
    assert load_config(None).generation.answer_format == "letter"
    message = _error(None, ["generation.answer_format=bogus"])
    assert message.startswith("override 'generation.answer_format=bogus'")
    assert "'generation.answer_format'" in message and "'bogus'" in message and "letter" in message
    message = _error(_write(tmp_path, "generation:\n  answer_format: words\n", "fmt.yaml"))
    assert "fmt.yaml" in message and "'generation.answer_format'" in message and "'words'" in message


def test_encoder_cache_needs_a_frozen_vision_tower(tmp_path):
    assert load_config(None, ["cache_encoder_outputs=true"]).cache_encoder_outputs is True
    assert load_config(None, ["finetuning_type=full", "train_encoders=all"]).cache_encoder_outputs is False
    cfg = load_config(None, ["finetuning_type=full", "train_encoders=audio", "cache_encoder_outputs=true"])
    assert (cfg.train_encoders, cfg.cache_encoder_outputs) == ("audio", True)  # the log-mel is cached
    for towers in ("audio", "vision", "all"):  # with LoRA (the default) the towers would not be saved
        message = _error(None, [f"train_encoders={towers}"])
        assert "'train_encoders'" in message and "finetuning_type" in message
    for towers in ("vision", "all"):
        message = _error(None, ["finetuning_type=full", f"train_encoders={towers}", "cache_encoder_outputs=true"])
        assert "'cache_encoder_outputs'" in message and "train_encoders" in message
    message = _error(_write(tmp_path, "finetuning_type: full\ntrain_encoders: all\ncache_encoder_outputs: true\n",
                            "cache.yaml"))
    assert "cache.yaml" in message and "'cache_encoder_outputs'" in message
    message = _error(_write(tmp_path, "train_encoders: true\n", "bool.yaml"))  # the old boolean form
    assert "bool.yaml" in message and "'train_encoders'" in message


def test_missing_recipe(tmp_path):
    message = _error(tmp_path / "nope.yaml")
    assert "nope.yaml" in message and "not found" in message


def test_directory_is_not_a_recipe(tmp_path):
    assert "not a file" in _error(tmp_path)


def test_malformed_yaml(tmp_path):
    message = _error(_write(tmp_path, "memory:\n  budget: [1, 2\n", "broken.yaml"))
    assert "broken.yaml" in message and "invalid YAML at line" in message


def test_duplicate_key(tmp_path):
    message = _error(_write(tmp_path, "dtype: float32\ndtype: bfloat16\n", "dup.yaml"))
    assert "dup.yaml" in message and "line 2" in message and "duplicate" in message


def test_top_level_not_a_mapping(tmp_path):
    message = _error(_write(tmp_path, "- dtype\n- float32\n", "list.yaml"))
    assert "list.yaml" in message and "mapping" in message


@pytest.mark.parametrize("item", ["memory.budget", "=5"])
def test_override_without_key_or_equals(item):
    message = _error(None, [item])
    assert message.startswith(f"override '{item}'") and ("key=value" in message or "missing key" in message)


@pytest.mark.parametrize(
    ("text", "overrides"),
    [
        ("zzz: 1\n", ()),
        ("memory:\n  budget: -1\n", ()),
        ("memory:\n  group_size: abc\n", ()),
        ("output_dir: ${nope}\n", ()),
        ("a: [\n", ()),
        ("'unterminated\n", ()),
        ("hello\n", ()),
        (None, ["memory.budget=[1"]),
        (None, ["media=3"]),
        (None, ["memory.budget=abc\nsecond line"]),
        (None, ["media.min_pixels=999999"]),
    ],
)
def test_every_error_is_one_line(tmp_path, text, overrides):
    recipe = None if text is None else _write(tmp_path, text)
    _error(recipe, overrides)  # asserts the message has no newline


# --- saving ----------------------------------------------------------------------------------


def test_save_config_round_trips(tmp_path):
    cfg = load_config(
        RECIPES / "infer" / "tiny_omni.yaml",
        ["memory.budget=7", "generation.system_prompt=Answer: briefly # not a comment", "media.audio=off"],
    )
    path = save_config(cfg, tmp_path / "runs" / "a")
    assert path == tmp_path / "runs" / "a" / "config.yaml"
    assert load_config(path) == cfg
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temp file left behind
    save_config(cfg, path.parent)  # overwrites in place
    assert load_config(path) == cfg


def test_config_to_dict():
    data = config_to_dict(load_config(None, ["memory.budget=9"]))
    assert data["memory"]["budget"] == 9 and data["media"]["audio"] == "auto"
    assert isinstance(data["generation"], dict)


def test_config_keys_have_help():
    keys = config_keys()
    assert "memory.budget" in keys and "model_name_or_path" in keys and "memory" not in keys
    assert all(help_text for help_text in keys.values())
