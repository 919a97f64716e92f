"""Load a typed config: dataclass defaults -> recipe YAML -> `key=value` overrides, merged once.

    from omnimem_train.config import load_config, save_config

    cfg = load_config("recipes/infer/tiny_omni.yaml", ["memory.budget=512", "device=cpu"])
    cfg.memory.budget        # 512 (int, checked by the schema)
    save_config(cfg, cfg.output_dir)   # writes <output_dir>/config.yaml, loadable as a recipe

The same merge from the command line:

    omnimem-train infer recipes/infer/tiny_omni.yaml memory.budget=512 device=cpu

Serving a trained or exported model (`infer`, `eval`, `StreamSession.from_pretrained`) uses
`load_serving_config`, which also reads the settings saved next to the model (its memory settings
and the answer format / system prompt it was trained with, `<model dir>/omnimem_memory.json`):
defaults < the model's settings < recipe < key=value.

Every problem with the input raises `ConfigError` with a one-line message that names where the
value came from (the recipe file or the override) and the dotted key, e.g.
`recipes/x.yaml: unknown key 'memory.scorr' (did you mean 'memory.scorer'?)` or
`override 'memory.budget=abc': key 'memory.budget': expected int or null, got 'abc'`.
Checks made after loading (the scorer exists, the budget file is there) name the source the same
way: every section built here records where its fields were set (`schema.source_of`).
"""

import dataclasses
import difflib
import io
import types
import typing
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

from omnimem_train.config.schema import SOURCES, Config, FieldValueError
from omnimem_train.config.served import model_memory_layer, served_settings
from omnimem_train.errors import ConfigError, first_line
from omnimem_train.utils.atomic import atomic_write_text

CONFIG_FILENAME = "config.yaml"
_SAVED_HEADER = "# Fully resolved config saved by omnimem-train; reuse it as a recipe to repeat the run.\n"


# (where the values came from, the dotted keys they set), in merge order
_Layer = tuple[str, set[str]]


def load_config(
    recipe: str | Path | None = None,
    overrides: Sequence[str] = (),
    schema: type = Config,
) -> Any:
    """Merge `schema`'s defaults, the `recipe` YAML (if any) and `overrides` (`"memory.budget=512"`),
    validate, and return a `schema` instance. Raises `ConfigError` (one line) on bad input."""
    _check_args(overrides, schema)
    return _build(schema, _user_layers(recipe, overrides, schema))[0]


def load_serving_config(
    recipe: str | Path | None = None,
    overrides: Sequence[str] = (),
    schema: type = Config,
    settings: Mapping[str, Any] | None = None,
    set_later: Collection[str] = (),
) -> tuple[Any, str | None]:
    """`load_config` for serving a model: the memory settings saved next to it are merged right
    after the schema defaults. Precedence: defaults < `<model dir>/omnimem_memory.json` < `recipe`
    < `settings` (a nested mapping, as a recipe would hold it) < `overrides`.

    The model is `model_name_or_path` as the recipe/settings/overrides resolve it; built-ins and
    hub ids have no such file. A relative `budget_file` in the file is resolved against the model
    directory. A higher layer that sets any of budget / budget_fraction / compression_ratio /
    budget_file replaces the model's budget as a whole (together they are one setting). A model trained without
    compression (`"compression": "none"`) contributes no memory settings: they never shaped
    the weights, so the recipe's (by default full memory) apply.

    The file also carries the prompt the model was trained on (`generation.answer_format`,
    `generation.system_prompt`), applied with the same precedence. `set_later`: dotted keys the
    caller replaces itself after loading (the eval grid's per-cell scorer and budget).

    Returns (config, note): note is one line listing the model's settings in effect (None when the
    model has no settings file).
    """
    _check_args(overrides, schema)
    cfg, layers = _build(schema, _user_layers(recipe, overrides, schema, settings))
    model_layer, note = model_memory_layer(cfg.model_name_or_path, set().union(*(_dotted_keys(d) for _, d in layers)),
                                           cfg, set_later)
    if model_layer is None:
        return cfg, note
    return _build(schema, [model_layer, *layers])[0], note


def save_config(cfg: Any, run_dir: str | Path) -> Path:
    """Write the fully resolved `cfg` to `run_dir/config.yaml` (atomically, creating `run_dir`)."""
    _require_instance(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CONFIG_FILENAME
    text = _SAVED_HEADER + OmegaConf.to_yaml(OmegaConf.structured(cfg), resolve=True)
    return atomic_write_text(path, text)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts (YAML/JSON-ready), e.g. for a checkpoint sidecar."""
    _require_instance(cfg)
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)


def memory_settings(cfg) -> dict:
    """A run config's settings to serve its model with (`served.served_settings`: memory and the
    prompt it was trained on)."""
    return served_settings(cfg)


def config_keys(schema: type = Config) -> dict[str, str]:
    """Every settable dotted key of `schema` (leaves only) mapped to its help text."""
    return {path: help_ for path, help_, is_section in _walk_schema(schema, "") if not is_section}


# ---------------------------------------------------------------------------------------------
# layers: (source, data) in merge order


def _check_args(overrides: Sequence[str], schema: type) -> None:
    if isinstance(overrides, str):
        raise TypeError("overrides must be a sequence of 'key=value' strings, not one string")
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        raise TypeError(f"schema must be a dataclass type, got {schema!r}")


def _user_layers(recipe, overrides: Sequence[str], schema: type,
                 settings: Mapping[str, Any] | None = None) -> Iterable[tuple[str, dict[str, Any]]]:
    """Lazily, so a recipe's problems are reported before a later override is even parsed."""
    if recipe is not None:
        yield str(recipe), _read_recipe(Path(recipe), str(recipe))
    if settings:
        yield "settings", dict(settings)
    for item in overrides:
        source = f"override {item!r}"
        yield source, _parse_override(item, source, schema)


def _build(schema: type, layers: Iterable[tuple[str, dict[str, Any]]]) -> tuple[Any, list[tuple[str, dict]]]:
    """Merge `layers` over `schema`'s defaults and validate -> (instance, the layers as merged)."""
    cfg = OmegaConf.structured(schema)
    merged: list[tuple[str, dict[str, Any]]] = []
    for source, data in layers:
        cfg = _merge(cfg, data, schema, source)
        merged.append((source, data))
    keys = [(source, _dotted_keys(data)) for source, data in merged]
    obj = _to_object(cfg, "", keys, schema)
    _note_sources(obj, "", keys)
    return obj, merged


# ---------------------------------------------------------------------------------------------
# reading the sources


def _read_recipe(path: Path, source: str) -> dict[str, Any]:
    if not path.exists():
        where = "" if path.is_absolute() else f" (looked for {path.resolve()})"
        raise ConfigError(f"{source}: recipe file not found{where}")
    if not path.is_file():
        raise ConfigError(f"{source}: recipe is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read recipe: {first_line(exc)}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)  # syntax and top-level shape only
        if node is None:
            return {}  # an empty recipe keeps every default
        if not isinstance(node, yaml.MappingNode):
            kind = "a list" if isinstance(node, yaml.SequenceNode) else "a single value"
            raise ConfigError(f"{source}: expected a mapping of config keys at the top level, got {kind}")
        loaded = OmegaConf.load(io.StringIO(text))  # OmegaConf's loader: 1e-4 is a float, no duplicate keys
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: {_yaml_problem(exc)}") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: {first_line(exc)}") from None
    return OmegaConf.to_container(loaded, resolve=False)


def _parse_override(item: Any, source: str, schema: type) -> dict[str, Any]:
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"{source}: expected key=value, e.g. memory.budget=512")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"{source}: missing key before '='")
    tp = _type_at(schema, key)
    if raw.strip() == "" and tp is not None and not _is_str_type(tp):  # YAML would read it as null
        hint = f" (write {key}=null for null)" if _is_optional(tp) else ""
        raise ConfigError(f"{source}: key '{key}': expected {_describe(tp)}, got an empty value{hint}")
    if _is_str_type(tp):  # keep the text as typed: media.audio=off must not become False
        value = None if raw in ("null", "~") and _is_optional(tp) else raw
        data: dict[str, Any] = {}
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
        return data
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([item]), resolve=False)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: cannot parse the value: {_yaml_problem(exc, where=False)}") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: {first_line(exc)}") from None


def _yaml_problem(exc: yaml.YAMLError, where: bool = True) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or first_line(exc)
    if mark is not None and where:
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"invalid YAML: {problem}"


# ---------------------------------------------------------------------------------------------
# merging and checking


def _merge(cfg: DictConfig, data: dict[str, Any], schema: type, source: str) -> DictConfig:
    _check_keys(data, schema, "", source, schema)
    try:
        return OmegaConf.merge(cfg, data)
    except ConfigKeyError as exc:  # _check_keys normally catches these first
        key = exc.full_key or exc.key
        raise ConfigError(f"{source}: unknown key '{key}'{_suggestion(str(key), schema)}") from None
    except ValidationError as exc:
        if not exc.full_key:
            raise ConfigError(f"{source}: {first_line(exc)}") from None
        expected = _describe(_type_at(schema, exc.full_key))
        raise ConfigError(f"{source}: key '{exc.full_key}': expected {expected}, got {exc.value!r}") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: {first_line(exc)}") from None


def _check_keys(data: dict[str, Any], schema: type, prefix: str, source: str, root: type) -> None:
    """Unknown keys and scalars given for a whole section, with the full dotted path."""
    names = {f.name for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{source}: unknown key '{path}'{_suggestion(path, root)}")
        section = _dataclass_in(hints[key])
        if section is None:
            if isinstance(value, bool) and _is_str_type(hints[key]):  # YAML 1.1: off/no/yes are booleans
                raise ConfigError(
                    f"{source}: key '{path}': expected str, got the YAML boolean {value}; "
                    "quote the value (unquoted off/on/no/yes/false/true are booleans)"
                )
            continue
        if isinstance(value, dict):
            _check_keys(value, section, f"{path}.", source, root)
        elif not (value is None or _is_interpolation(value)):
            raise ConfigError(f"{source}: key '{path}': expected {_describe(hints[key])}, got {value!r}")


def _to_object(node: DictConfig, prefix: str, layers: list[_Layer], root: type) -> Any:
    """`OmegaConf.to_object`, innermost sections first, so a failing check knows its dotted path."""
    schema = OmegaConf.get_type(node)
    hints = typing.get_type_hints(schema)
    try:
        for f in dataclasses.fields(schema):
            if _dataclass_in(hints[f.name]) is not None and node[f.name] is not None:
                _to_object(node[f.name], f"{prefix}{f.name}.", layers, root)
        return OmegaConf.to_object(node)
    except FieldValueError as exc:
        keys = [prefix + exc.name, *(prefix + name for name in exc.related)]
        raise ConfigError(
            f"{_source_of(keys, layers, root)}: key '{prefix}{exc.name}': expected {exc.expected}, got {exc.value!r}"
        ) from None
    except MissingMandatoryValue as exc:
        key = exc.full_key or prefix.rstrip(".")
        source = _source_of([key], layers, root)
        raise ConfigError(f"{source}: key '{key}': missing value, set it with {key}=...") from None
    except OmegaConfBaseException as exc:
        key = exc.full_key or prefix.rstrip(".")
        where = f"key '{key}': " if key else ""
        raise ConfigError(f"{_source_of([key], layers, root)}: {where}{first_line(exc)}") from None
    except (ValueError, TypeError) as exc:  # a check written without FieldValueError
        section = prefix.rstrip(".") or "config"
        raise ConfigError(
            f"{_source_of([section], layers, root)}: invalid {section}: {first_line(exc)}"
        ) from exc


def _source_of(keys: list[str], layers: list[_Layer], root: type) -> str:
    """The last source that set any of `keys` (or a section above them)."""
    return _setter(keys, layers) or (layers[-1][0] if layers else f"{root.__name__} defaults")


def _setter(keys: list[str], layers: list[_Layer]) -> str | None:
    """The last source that set any of `keys` (or a section above them); None when none did."""
    for source, set_keys in reversed(layers):
        for key in keys:
            if any(key == s or key.startswith(s + ".") or s.startswith(key + ".") for s in set_keys):
                return source
    return None


def _note_sources(obj: Any, prefix: str, layers: list[_Layer]) -> None:
    """Record on `obj` and on each section in it `SOURCE: key 'dotted.key'` for every field a source
    set (`schema.source_of` reads it), so a check made after loading (the scorer exists, the budget
    file is there) names the recipe, override or settings file the value came from."""
    sources = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            _note_sources(value, f"{prefix}{f.name}.", layers)
        elif (source := _setter([prefix + f.name], layers)) is not None:
            sources[f.name] = f"{source}: key '{prefix}{f.name}'"
    object.__setattr__(obj, SOURCES, sources)


# ---------------------------------------------------------------------------------------------
# schema introspection


def _walk_schema(schema: type, prefix: str):
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        path = f"{prefix}{f.name}"
        section = _dataclass_in(hints[f.name])
        yield path, f.metadata.get("help", ""), section is not None
        if section is not None:
            yield from _walk_schema(section, f"{path}.")


def _suggestion(path: str, root: type) -> str:
    """` (did you mean 'memory.scorer'?)` for the closest known dotted key, else ''."""
    candidates = [p for p, _, _ in _walk_schema(root, "")]
    match = difflib.get_close_matches(path, candidates, n=1, cutoff=0.6)
    if not match:  # compare the last component only: 'scorr' -> 'memory.scorer'
        by_leaf = {c.rsplit(".", 1)[-1]: c for c in candidates}
        leaf = difflib.get_close_matches(path.rsplit(".", 1)[-1], list(by_leaf), n=1, cutoff=0.75)
        match = [by_leaf[leaf[0]]] if leaf else []
    return f" (did you mean '{match[0]}'?)" if match else ""


def _type_at(schema: type, dotted: str) -> Any:
    tp: Any = schema
    for part in dotted.split("."):
        tp = _dataclass_in(tp)
        if tp is None:
            return None
        tp = typing.get_type_hints(tp).get(part)
    return tp


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass in `tp` (`X`, `X | None`, `Optional[X]`), else None."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if isinstance(arg, type) and dataclasses.is_dataclass(arg):
                return arg
    return None


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _is_str_type(tp: Any) -> bool:
    if _is_optional(tp):
        return set(typing.get_args(tp)) == {str, type(None)}
    return tp is str


def _describe(tp: Any) -> str:
    if tp is None:
        return "a valid value"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        text = " or ".join(_describe(a) for a in args)
        return text + " or null" if len(args) < len(typing.get_args(tp)) else text
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return f"a mapping of {tp.__name__} keys"
    if tp is bool:
        return "true or false"
    return getattr(tp, "__name__", str(tp))


# ---------------------------------------------------------------------------------------------
# small helpers


def _dotted_keys(data: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            keys |= _dotted_keys(value, f"{path}.")
        else:
            keys.add(path)
    return keys


def _is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("${")



def _require_instance(cfg: Any) -> None:
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"expected a config dataclass instance, got {type(cfg).__name__}")
