"""Keep everything: the uncompressed upper bound (streaming then equals one full forward)."""

from omnimem_train.memory.policy import MemoryPolicy


class FullMemory(MemoryPolicy):
    name = "full"

    def update(self, ctx):
        return ctx.cand
