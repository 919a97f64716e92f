"""Shipped scorers, one file each; importing this package registers them by name."""

from omnimem_train.memory.scorers import (  # noqa: F401
    h2o,
    key_norm,
    keydiff,
    omnimem,
    random,
    recency,
    snapkv,
    value_norm,
)
from omnimem_train.memory.scorers.base import Scorer, build_scorer, register_scorer, scorer_names

__all__ = ["Scorer", "build_scorer", "register_scorer", "scorer_names"]
