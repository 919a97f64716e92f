"""What a stream left in memory: retained tokens per layer and modality, and their bytes.

With `memory.per_head` the token counts are per KV head (every head keeps the same count of each
modality, possibly different tokens); bytes count what is held for all heads, the per-head
bookkeeping included.

Terms, as every table and plot of the project uses them: KV = the retained keys and values; extra
state = everything else kept per retained token (the policy's state, e.g. OmniMem's hidden states and
running attention, and the engine's bookkeeping: positions, modality, stream index); total = KV +
extra state, what a method must hold to go on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from omnimem_train.memory.layer_memory import LayerMemory
from omnimem_train.models.base import Modality


@dataclass
class LayerReport:
    # Tokens retained; with per_head the mean over KV heads (a float: under a pooled budget heads
    # may split it differently between audio and visual).
    text: int | float
    visual: int | float
    audio: int | float
    kv_bytes: int
    extra_bytes: int  # whatever else the policy stores per token (hidden states, running attention)
    meta_bytes: int = 0  # the engine's per-token bookkeeping (positions, modality, stream index; per head)


@dataclass
class MemoryReport:
    layers: list[LayerReport]
    tokens_seen: int

    @property
    def kv_bytes(self) -> int:
        return sum(layer.kv_bytes for layer in self.layers)

    @property
    def total_bytes(self) -> int:
        """KV + extra state (the policy's per-token state and the bookkeeping), all layers."""
        return sum(layer.kv_bytes + layer.extra_bytes + layer.meta_bytes for layer in self.layers)

    def mean(self, field: str) -> float:
        return sum(getattr(layer, field) for layer in self.layers) / max(len(self.layers), 1)

    def line(self) -> str:
        """One-line summary for the CLI."""
        return (
            f"memory: {self.tokens_seen} stream tokens seen; retained per layer (mean over {len(self.layers)}): "
            f"text {self.mean('text'):.0f}, visual {self.mean('visual'):.0f}, audio {self.mean('audio'):.0f}; "
            f"KV {_mib(self.kv_bytes)} + extra state {_mib(self.total_bytes - self.kv_bytes)} "
            f"= total {_mib(self.total_bytes)}"
        )

    def to_dict(self) -> dict:
        return {"tokens_seen": self.tokens_seen, "kv_bytes": self.kv_bytes, "total_bytes": self.total_bytes,
                "layers": [asdict(layer) for layer in self.layers]}


def memory_report(layers: list[LayerMemory], tokens_seen: int) -> MemoryReport:
    return MemoryReport(
        [
            LayerReport(m.count(Modality.TEXT), m.count(Modality.VISUAL), m.count(Modality.AUDIO),
                        m.kv_bytes(), m.extra_bytes(), m.meta_bytes())
            for m in layers
        ],
        tokens_seen,
    )


def full_context_report(modality: torch.Tensor, n_layers: int, kv_bytes_per_token: int) -> MemoryReport:
    """What a full-context (uncompressed) forward holds: every token (modality: (N,)) in every layer."""
    counts = [int((modality == int(m)).sum()) for m in (Modality.TEXT, Modality.VISUAL, Modality.AUDIO)]
    layer = LayerReport(*counts, kv_bytes=len(modality) * kv_bytes_per_token, extra_bytes=0)
    return MemoryReport([layer] * n_layers, counts[1] + counts[2])


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"
