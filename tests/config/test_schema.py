"""Config dataclasses: defaults are valid, every field has help, bad values name field and value."""

import dataclasses

import pytest

from omnimem_train.config.schema import (
    Config,
    FieldValueError,
    GenerationConfig,
    MediaConfig,
    MemoryConfig,
)

SECTIONS = [Config, MediaConfig, MemoryConfig, GenerationConfig]


@pytest.mark.parametrize("cls", SECTIONS, ids=lambda c: c.__name__)
def test_defaults_are_valid(cls):
    cls()


@pytest.mark.parametrize("cls", SECTIONS, ids=lambda c: c.__name__)
def test_every_field_has_help(cls):
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help", "").strip(), f"{cls.__name__}.{f.name} has no help text"


def test_config_nests_the_sections():
    cfg = Config()
    assert isinstance(cfg.media, MediaConfig)
    assert isinstance(cfg.memory, MemoryConfig)
    assert isinstance(cfg.generation, GenerationConfig)
    assert cfg.memory.budget is None and cfg.memory.group_size == 1024


@pytest.mark.parametrize(
    ("cls", "kwargs", "name"),
    [
        (Config, {"dtype": "float8"}, "dtype"),
        (Config, {"device": "gpu"}, "device"),
        (Config, {"device": "cuda:x"}, "device"),
        (Config, {"attn_implementation": "flash"}, "attn_implementation"),
        (Config, {"model_name_or_path": ""}, "model_name_or_path"),
        (MediaConfig, {"video_fps": 0.0}, "video_fps"),
        (MediaConfig, {"min_pixels": 100_000}, "min_pixels"),  # > default max_pixels
        (MediaConfig, {"audio": "loud"}, "audio"),
        (MemoryConfig, {"scorer": ""}, "scorer"),
        (MemoryConfig, {"budget": -1}, "budget"),
        (MemoryConfig, {"group_size": 0}, "group_size"),
        (MemoryConfig, {"group_seconds": 0.0}, "group_seconds"),
        (GenerationConfig, {"max_new_tokens": 0}, "max_new_tokens"),
        (GenerationConfig, {"answer_format": "bogus"}, "answer_format"),
        (Config, {"cache_encoder_outputs": True, "train_encoders": "vision", "finetuning_type": "full"},
         "cache_encoder_outputs"),
        (Config, {"train_encoders": True}, "train_encoders"),
        (Config, {"train_encoders": "towers"}, "train_encoders"),
        (Config, {"cache_encoder_outputs": "yes"}, "cache_encoder_outputs"),
    ],
)
def test_invalid_value_names_field_and_value(cls, kwargs, name):
    with pytest.raises(ValueError) as info:
        cls(**kwargs)
    assert isinstance(info.value, FieldValueError)
    assert info.value.name == name
    message = str(info.value)
    assert name in message and repr(kwargs[name]) in message
    assert "\n" not in message


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_choices(device):
    assert Config(device=device).device == device


def test_edge_values_are_valid():
    assert MemoryConfig(budget=0).budget == 0
    assert MemoryConfig(group_seconds=2.0, group_size=1).group_seconds == 2.0
    assert MediaConfig(min_pixels=50176, max_pixels=50176).min_pixels == 50176
