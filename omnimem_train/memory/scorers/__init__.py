"""Shipped scorers, one file each; importing this package registers them by name in `SCORERS`."""

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
from omnimem_train.memory.scorers.base import SCORERS, Scorer, register_scorer

__all__ = ["SCORERS", "Scorer", "register_scorer"]
