"""Build the memory policy a `MemoryConfig` names: `full`, `frame_drop`, or any registered scorer
under the configured budgets."""

from __future__ import annotations

from omnimem_train.config.schema import source_of
from omnimem_train.errors import ConfigError
from omnimem_train.memory.budgets import budgets_from_config, read_budget_file
from omnimem_train.memory.layer_memory import TokenShape
from omnimem_train.memory.policies.frame_drop import FrameDropPolicy
from omnimem_train.memory.policies.full import FullMemory
from omnimem_train.memory.policies.scored import ScoredPolicy
from omnimem_train.memory.policy import MemoryPolicy
from omnimem_train.memory.scorers import SCORERS, Scorer

SPECIAL = ("full", "frame_drop")


def scorer_names() -> list[str]:
    return sorted(SCORERS)


def per_head_scorers() -> list[str]:
    """Scorers that can select per KV head (`memory.per_head`)."""
    return [name for name in scorer_names() if SCORERS[name].supports_per_head]


def build_scorer(name: str, cfg) -> Scorer:
    if name not in SCORERS:
        raise ConfigError(f"memory.scorer: unknown scorer {name!r}; known: {', '.join(scorer_names())}")
    return SCORERS[name].from_config(cfg)


def known_methods() -> list[str]:
    return sorted([*SPECIAL, *scorer_names()])


def check_memory(cfg) -> None:
    """The checks of `build_policy` that need no model (run them before loading one): the method
    exists, `per_head` fits it, the budget file reads (its layer count is checked at build)."""
    if cfg.scorer not in known_methods():
        raise ConfigError(f"{source_of(cfg, 'scorer', 'memory.scorer')}: unknown scorer {cfg.scorer!r}; "
                          f"known: {', '.join(known_methods())}")
    if cfg.scorer == "full":
        return  # keeps everything: memory.per_head has nothing to select, so it is no error
    if cfg.per_head and cfg.scorer not in per_head_scorers():
        # omnimem/novelty/recency/random score stream tokens, not KV heads; frame_drop drops time
        # steps before the model: none has a per-head choice to make.
        raise ConfigError(f"{source_of(cfg, 'per_head', 'memory.per_head')}: {cfg.scorer!r} selects one token "
                          f"set for all KV heads; per-head selection needs one of {', '.join(per_head_scorers())} "
                          "(or memory.per_head: false)")
    if cfg.budget_file is not None:
        read_budget_file(cfg.budget_file, None, where=source_of(cfg, "budget_file", "memory.budget_file"))


def build_policy(cfg, n_layers: int, equal_bytes: TokenShape | None = None) -> MemoryPolicy:
    """cfg: `MemoryConfig`; n_layers: decoder layers (budget files are checked against it).
    equal_bytes: the model's `TokenShape` to size the budget at equal retained bytes instead of equal
    tokens (`BudgetedPolicy.at_equal_bytes`; needs memory.budget or memory.budget_fraction)."""
    check_memory(cfg)
    if cfg.scorer == "full":
        return FullMemory()
    budgets = budgets_from_config(cfg, n_layers)
    if cfg.scorer == "frame_drop":
        policy = FrameDropPolicy(budgets)
    else:
        policy = ScoredPolicy(build_scorer(cfg.scorer, cfg), budgets)
    if equal_bytes is not None:
        if cfg.budget is None and cfg.budget_fraction is None:
            raise ConfigError("eval.budget_axis: bytes needs a token budget to convert (memory.budget or "
                              "memory.budget_fraction)")
        policy.at_equal_bytes(equal_bytes)
    return policy


def make_policy(scorer: str, n_layers: int, **memory_fields) -> MemoryPolicy:
    """Shorthand: `make_policy("omnimem", 4, budget=256)` builds a `MemoryConfig` and its policy."""
    from omnimem_train.config.schema import MemoryConfig

    return build_policy(MemoryConfig(scorer=scorer, **memory_fields), n_layers)
