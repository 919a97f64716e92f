"""Keep everything: the uncompressed upper bound (streaming then equals one full forward)."""

from omnimem_train.memory.policy import MemoryPolicy
from omnimem_train.memory.registry import register_policy


@register_policy("full")
class FullMemory(MemoryPolicy):
    def __init__(self, budget: int | None = None):
        # `budget` is accepted (and ignored) so every policy is built from the same config keys.
        self.budget = None

    def select(self, layer_idx, cand, n_new):
        return None
