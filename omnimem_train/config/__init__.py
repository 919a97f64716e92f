"""Typed config: dataclasses in `schema`, merged defaults -> recipe YAML -> key=value in `load`."""

from omnimem_train.config.load import (
    CONFIG_FILENAME,
    config_keys,
    config_to_dict,
    load_config,
    load_serving_config,
    save_config,
)
from omnimem_train.config.schema import (
    ATTN_IMPLEMENTATIONS,
    AUDIO_MODES,
    DTYPES,
    Config,
    FieldValueError,
    GenerationConfig,
    MediaConfig,
    MemoryConfig,
)

__all__ = [
    "ATTN_IMPLEMENTATIONS",
    "AUDIO_MODES",
    "CONFIG_FILENAME",
    "DTYPES",
    "Config",
    "FieldValueError",
    "GenerationConfig",
    "MediaConfig",
    "MemoryConfig",
    "config_keys",
    "config_to_dict",
    "load_config",
    "load_serving_config",
    "save_config",
]
