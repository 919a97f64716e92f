"""How many audio/visual tokens each layer may keep (METHOD §4). Separate from scoring: any scorer
runs under any budget, modality-aware or modality-blind.

Modes (exactly one): a uniform target size per layer split visual:audio by ρ, a per-layer budget
file (JSON list of [audio, visual] per layer, as `omnimem-train calibrate` writes), or a
compression ratio (kvpress's meaning: the fraction of seen audio/visual tokens removed). Text is
never counted; a limit above what exists keeps everything; a limit of 0 is legal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from omnimem_train.errors import ConfigError
from omnimem_train.models.base import Modality


@dataclass(frozen=True)
class Limits:
    """Per-layer caps for one selection. `pooled` set => modality-blind (audio+visual together)."""

    audio: int | None = None
    visual: int | None = None
    pooled: int | None = None


@dataclass(frozen=True)
class Budgets:
    per_layer: tuple[tuple[int, int], ...] | None = None  # (audio, visual) per layer
    keep_fraction: float | None = None  # 1 - compression_ratio
    modality_aware: bool = True

    # --- construction ------------------------------------------------------------------------
    @staticmethod
    def uniform(total: int, n_layers: int, rho: float, modality_aware: bool = True) -> Budgets:
        """`total` audio+visual tokens per layer; audio gets total/(1+ρ) (ρ = visual:audio prior)."""
        audio = round(total / (1 + rho))
        return Budgets(((audio, total - audio),) * n_layers, None, modality_aware)

    @staticmethod
    def ratio(compression_ratio: float, modality_aware: bool = True) -> Budgets:
        return Budgets(None, 1.0 - compression_ratio, modality_aware)

    @staticmethod
    def from_file(path: str | Path, n_layers: int, modality_aware: bool = True) -> Budgets:
        return Budgets(read_budget_file(path, n_layers), None, modality_aware)

    @staticmethod
    def unlimited() -> Budgets:
        return Budgets()

    # --- use ---------------------------------------------------------------------------------
    def limits(self, layer_idx: int, seen: dict[Modality, int]) -> Limits:
        if self.keep_fraction is not None:
            a, v = (int(seen.get(m, 0) * self.keep_fraction) for m in (Modality.AUDIO, Modality.VISUAL))
            pooled = int((seen.get(Modality.AUDIO, 0) + seen.get(Modality.VISUAL, 0)) * self.keep_fraction)
        elif self.per_layer is not None:
            a, v = self.per_layer[layer_idx]
            pooled = a + v
        else:
            return Limits()
        return Limits(a, v) if self.modality_aware else Limits(pooled=pooled)

    def static_limits(self) -> list[Limits] | None:
        """Per-layer limits that do not depend on the stream (None for ratio/unlimited budgets)."""
        if self.per_layer is None:
            return None
        return [self.limits(i, {}) for i in range(len(self.per_layer))]


def read_budget_file(path: str | Path, n_layers: int) -> tuple[tuple[int, int], ...]:
    """Validate and read a budget JSON: a list of n_layers [audio, visual] non-negative ints (or an
    object with a "layers" list of such pairs, as calibration writes)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: budget file not found")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({str(e).splitlines()[0]})") from e
    layers = data.get("layers") if isinstance(data, dict) else data
    if not isinstance(layers, list):
        raise ConfigError(f"{path}: expected a list of [audio, visual] pairs (or {{\"layers\": [...]}})")
    if len(layers) != n_layers:
        raise ConfigError(f"{path}: has {len(layers)} layers, the model has {n_layers}")
    out = []
    for i, pair in enumerate(layers):
        ok = isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                              for x in pair)
        if not ok:
            raise ConfigError(f"{path}: layer {i}: expected [audio, visual] integers, got {pair!r}")
        if min(pair) < 0:
            raise ConfigError(f"{path}: layer {i}: negative budget {pair!r}")
        out.append((pair[0], pair[1]))
    return tuple(out)


def budgets_from_config(cfg, n_layers: int) -> Budgets:
    """`MemoryConfig` -> Budgets (unlimited when none of budget / compression_ratio / budget_file)."""
    if cfg.budget_file is not None:
        return Budgets.from_file(cfg.budget_file, n_layers, cfg.modality_aware)
    if cfg.compression_ratio is not None:
        return Budgets.ratio(cfg.compression_ratio, cfg.modality_aware)
    if cfg.budget is not None:
        return Budgets.uniform(cfg.budget, n_layers, cfg.rho, cfg.modality_aware)
    return Budgets.unlimited()
