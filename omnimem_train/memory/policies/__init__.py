"""Shipped memory policies; importing this package registers them."""

from omnimem_train.memory.policies import full, recent  # noqa: F401
