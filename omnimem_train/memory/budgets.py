"""How many audio/visual tokens each layer may keep (METHOD §4). Separate from scoring: any scorer
runs under any budget, modality-aware or modality-blind.

A budget has a size and a shape:

- size, at most one of: `budget` (N audio+visual tokens per layer), `budget_fraction` (f times the
  stream's own exact audio+visual token count, per layer: `fraction_budget`, the one place this is
  computed), or `compression_ratio` (kvpress's meaning: keep 1 - r of the audio/visual tokens
  seen so far, so memory grows with the stream);
- shape (allocation): uniform (every layer the same, split visual:audio by ρ), a per-layer
  profile (`budget_file`: JSON list with one entry per layer, `[audio, visual]` as `omnimem-train
  calibrate` writes, or a single int: that layer's audio+visual total without a split, shared by
  both modalities, as the release's budget files may give it), or modality-blind (one pooled
  audio+visual budget per layer). A budget file alone gives absolute budgets; with `budget` or
  `budget_fraction` it is a profile, scaled to the same total as the uniform budget of that size
  (`scale_profile`), so every allocation compares at equal memory.

Text is never counted; a limit above what exists keeps everything; a limit of 0 is legal.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from omnimem_train.config.schema import source_of
from omnimem_train.errors import ConfigError, first_line
from omnimem_train.models.base import Modality, StreamPiece


@dataclass(frozen=True)
class Limits:
    """Per-layer caps for one selection. `pooled` set => audio and visual compete for that one cap
    (selection reads only `pooled` then). `audio`/`visual` set alongside it (a layer whose budget is
    a total without a split, under modality-aware budgets) are that total split by ρ, for a caller
    that must cap each modality on its own (frame dropping, before the LLM)."""

    audio: int | None = None
    visual: int | None = None
    pooled: int | None = None


MEDIA = (Modality.AUDIO, Modality.VISUAL)

# One layer's entry in a budget file or profile: (audio, visual), or an int: the layer's audio+visual
# total without a split (one budget both modalities share).
LayerBudget = tuple[int, int] | int


def fraction_budget(fraction: float, counts: Mapping[Modality, int]) -> int:
    """THE meaning of a relative budget: `fraction` of the stream's own audio+visual tokens, per layer.

    counts: the stream's exact token counts by modality (`stream_counts`), never an estimate.
    -> round(fraction x (audio + visual)) (half up), at least 1 when the stream has media: "1/16"
    is this number of tokens in training, evaluation, `infer` and the live session alike.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    n = sum(int(counts.get(m, 0)) for m in MEDIA)
    return 0 if n == 0 else max(1, math.floor(fraction * n + 0.5))


class StreamCounts(dict):
    """{Modality: tokens} of a stream's audio and visual tokens (a plain dict of the media, so sums
    over it stay media counts), with `text`: its text tokens, which every layer keeps (what an
    equal-bytes budget must leave room for)."""

    text: int = 0


def stream_counts(pieces: Iterable[StreamPiece]) -> StreamCounts:
    """Exact audio/visual token counts of a materialised stream (a list of pieces), and its text
    token count (`StreamCounts.text`)."""
    counts = StreamCounts.fromkeys(MEDIA, 0)
    for piece in pieces:
        for m in MEDIA:
            counts[m] += int((piece.modality == int(m)).sum())
        counts.text += int((piece.modality == int(Modality.TEXT)).sum())
    return counts


@dataclass(frozen=True)
class EqualBytes:
    """Turns a token budget into the one whose retained bytes equal those of a method keeping K/V
    only (`eval.budget_axis: bytes`). Costs are bytes per retained token at one layer
    (`layer_memory.TokenBytes.total`): `reference`, K/V and bookkeeping; `method`, the same plus the
    method's per-token state (hidden states, running attention, per-head bookkeeping)."""

    reference: int
    method: int

    def __post_init__(self):
        if not 0 < self.reference <= self.method:
            raise ValueError(f"need 0 < reference <= method bytes per token, got {self.reference}, {self.method}")

    def tokens(self, budget: int, text: int) -> int:
        """Audio+visual tokens per layer of the method -> floor((text + budget) x reference / method) - text
        (at least 0): the text every layer keeps costs the method its own bytes too, so the layer's
        total stays at or below (text + budget) x reference."""
        return max(0, (text + budget) * self.reference // self.method - text)


def largest_remainder(shares: list[float], total: int) -> list[int]:
    """Non-negative ints, each floor or ceil of its share (up to round-off), summing to `total`;
    the leftover units go to the largest fractional parts (ties: lower index first), so a larger
    share never gets fewer units."""
    n = len(shares)
    if n == 0:
        if total:
            raise ValueError("cannot distribute a positive total over zero layers")
        return []
    out = [max(0, math.floor(s)) for s in shares]
    order = sorted(range(n), key=lambda j: (-(shares[j] - math.floor(shares[j])), j))
    rest = total - sum(out)
    k = 0
    while rest > 0:  # normally rest < n: one pass
        out[order[k % n]] += 1
        rest, k = rest - 1, k + 1
    k = n - 1
    while rest < 0:  # only if round-off pushed the floors past the total
        j = order[k % n]
        if out[j] > 0:
            out[j], rest = out[j] - 1, rest + 1
        k -= 1
    return out


def scale_profile(profile: Sequence[LayerBudget], total: int) -> tuple[LayerBudget, ...]:
    """A per-layer profile (L entries: [audio, visual] pairs, or ints for a layer total without a
    split) scaled to `total` tokens over all layers and modalities: each number of the profile (two
    per pair, one per int) gets its share of `total` by largest remainder, so the sum is exactly
    `total` (the uniform budget's L x B: equal memory) and the profile's shape is kept, every entry
    in its own form. A profile of all zeros spreads `total` evenly."""
    flat = [float(x) for entry in profile for x in _numbers(entry)]
    z = sum(flat)
    shares = [total * x / z for x in flat] if z > 0 else [total / len(flat)] * len(flat)
    units = iter(largest_remainder(shares, total))
    return tuple(next(units) if isinstance(entry, int) else (next(units), next(units)) for entry in profile)


def _numbers(entry: LayerBudget) -> tuple[int, ...]:
    return (entry,) if isinstance(entry, int) else tuple(entry)


def split_by_rho(total: int, rho: float) -> tuple[int, int]:
    """(audio, visual) of `total` audio+visual tokens: audio gets total/(1+ρ), rounded."""
    audio = round(total / (1 + rho))
    return audio, total - audio


@dataclass(frozen=True)
class Budgets:
    """Per-layer limits. Concrete (`per_layer` or `keep_fraction` or unlimited), or a template
    (`fraction` set) that `for_stream` turns into concrete per-layer budgets once the stream's
    exact token counts are known."""

    per_layer: tuple[tuple[int, int], ...] | None = None  # (audio, visual) per layer
    keep_fraction: float | None = None  # 1 - compression_ratio
    modality_aware: bool = True
    fraction: float | None = None  # budget_fraction: resolved per stream by `for_stream`
    profile: tuple[LayerBudget, ...] | None = None  # shape for `fraction` (None: uniform)
    rho: float = 5.0
    n_layers: int = 0
    # Layers whose budget is a total without a split (an int in the file): audio and visual share
    # it (a pooled cap); their `per_layer` pair is that total split by ρ.
    shared_layers: frozenset[int] = frozenset()
    # At equal bytes (`equal_bytes` set) the per-layer size is resolved per stream by `for_stream`
    # from `size` (an absolute budget) or `fraction`, and the stream's text count.
    size: int | None = None
    equal_bytes: EqualBytes | None = None

    # --- construction ------------------------------------------------------------------------
    @staticmethod
    def uniform(total: int, n_layers: int, rho: float, modality_aware: bool = True) -> Budgets:
        """`total` audio+visual tokens per layer; audio gets total/(1+ρ) (ρ = visual:audio prior)."""
        return Budgets((split_by_rho(total, rho),) * n_layers, None, modality_aware, rho=rho, n_layers=n_layers)

    @staticmethod
    def of_layers(layers: Sequence[LayerBudget], rho: float, modality_aware: bool = True) -> Budgets:
        """Absolute per-layer budgets: (audio, visual) pairs, or ints (a layer total that audio and
        visual share)."""
        shared = frozenset(i for i, entry in enumerate(layers) if isinstance(entry, int))
        pairs = tuple(split_by_rho(entry, rho) if isinstance(entry, int) else (entry[0], entry[1]) for entry in layers)
        return Budgets(pairs, None, modality_aware, rho=rho, n_layers=len(pairs), shared_layers=shared)

    @staticmethod
    def sized(total: int, n_layers: int, rho: float, profile=None, modality_aware: bool = True) -> Budgets:
        """`total` audio+visual tokens per layer on average: uniform, or `profile`'s shape scaled to
        the same n_layers x total."""
        if profile is None:
            budgets = Budgets.uniform(total, n_layers, rho, modality_aware)
        else:
            budgets = Budgets.of_layers(scale_profile(profile, total * n_layers), rho, modality_aware)
        # The size and shape it came from: `at_equal_bytes` re-sizes it per stream.
        return dataclasses.replace(budgets, size=total, profile=None if profile is None else tuple(profile))

    @staticmethod
    def of_fraction(fraction: float, n_layers: int, rho: float, profile=None, modality_aware: bool = True) -> Budgets:
        return Budgets(None, None, modality_aware, fraction, None if profile is None else tuple(profile), rho,
                       n_layers)

    @staticmethod
    def ratio(compression_ratio: float, modality_aware: bool = True) -> Budgets:
        return Budgets(None, 1.0 - compression_ratio, modality_aware)

    @staticmethod
    def from_file(path: str | Path, n_layers: int, modality_aware: bool = True, rho: float = 5.0) -> Budgets:
        return Budgets.of_layers(read_budget_file(path, n_layers), rho, modality_aware)

    @staticmethod
    def unlimited() -> Budgets:
        return Budgets()

    # --- use ---------------------------------------------------------------------------------
    @property
    def needs_counts(self) -> bool:
        """Whether the stream's exact token counts must be known before it starts (`for_stream`)."""
        return self.fraction is not None or self.equal_bytes is not None

    def at_equal_bytes(self, equal_bytes: EqualBytes) -> Budgets:
        """This budget (an absolute `sized` one, or a fraction template) as a template resolved per
        stream to the token count of equal retained bytes (`EqualBytes.tokens`), same allocation."""
        if self.fraction is None and self.size is None:
            raise ValueError("equal bytes needs a budget or budget_fraction size")
        return dataclasses.replace(self, per_layer=None, shared_layers=frozenset(), equal_bytes=equal_bytes)

    def for_stream(self, counts: Mapping[Modality, int]) -> Budgets:
        """The concrete budgets of one stream with these exact audio/visual (and, at equal bytes,
        text) token counts (self when the size does not depend on the stream)."""
        if not self.needs_counts:
            return self
        total = self.size if self.fraction is None else fraction_budget(self.fraction, counts)
        if self.equal_bytes is not None:
            total = self.equal_bytes.tokens(total, int(getattr(counts, "text", 0)))
        return Budgets.sized(total, self.n_layers, self.rho, self.profile, self.modality_aware)

    def limits(self, layer_idx: int, seen: dict[Modality, int]) -> Limits:
        if self.needs_counts:
            raise RuntimeError("a budget_fraction or equal-bytes budget is resolved per stream: call "
                               "for_stream(counts) first")
        if self.keep_fraction is not None:
            a, v = (int(seen.get(m, 0) * self.keep_fraction) for m in MEDIA)
            pooled = int((seen.get(Modality.AUDIO, 0) + seen.get(Modality.VISUAL, 0)) * self.keep_fraction)
        elif self.per_layer is not None:
            a, v = self.per_layer[layer_idx]
            pooled = a + v
            if self.modality_aware and layer_idx in self.shared_layers:
                return Limits(a, v, pooled)  # one cap audio and visual share; (a, v): its ρ split
        else:
            return Limits()
        return Limits(a, v) if self.modality_aware else Limits(pooled=pooled)

    def static_limits(self) -> list[Limits] | None:
        """Per-layer limits that do not depend on the stream (None for ratio/unlimited budgets)."""
        if self.per_layer is None:
            return None
        return [self.limits(i, {}) for i in range(len(self.per_layer))]

    def mean_total(self) -> float | None:
        """Audio+visual tokens per layer, averaged over layers (None unless per-layer)."""
        if self.per_layer is None:
            return None
        return sum(a + v for a, v in self.per_layer) / max(len(self.per_layer), 1)


def read_budget_file(path: str | Path, n_layers: int | None, key: str = "memory.budget_file",
                     where: str | None = None) -> tuple[LayerBudget, ...]:
    """Validate and read a budget JSON: a list of n_layers entries (or an object with a "layers"
    list of them, as calibration writes); n_layers None: any number. An entry is an [audio, visual]
    pair of non-negative ints -> (audio, visual), or one non-negative int, the layer's audio+visual
    total without a split (the release's form) -> that int, a budget both modalities share.

    Errors are one line `FILE: KEY: problem` (`key`: the config key that named the file); a missing
    file starts with `where` (`schema.source_of`: the recipe or override that set the key) instead."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{where or key}: {path}: budget file not found")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: {key}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: {key}: cannot read: {first_line(e)}") from None
    layers = data.get("layers") if isinstance(data, dict) else data
    if not isinstance(layers, list):
        raise ConfigError(f"{path}: {key}: expected a list of [audio, visual] pairs or layer totals "
                          "(or {\"layers\": [...]})")
    if n_layers is not None and len(layers) != n_layers:
        raise ConfigError(f"{path}: {key}: has {len(layers)} layers, the model has {n_layers}")
    out = []
    for i, entry in enumerate(layers):
        numbers = [entry] if not isinstance(entry, list) else entry
        ok = (len(numbers) == 2 or not isinstance(entry, list)) and all(
            isinstance(x, int) and not isinstance(x, bool) for x in numbers)
        if not ok:
            raise ConfigError(f"{path}: {key}: layer {i}: expected [audio, visual] integers or one integer "
                              f"(the layer's audio+visual total), got {entry!r}")
        if min(numbers) < 0:
            raise ConfigError(f"{path}: {key}: layer {i}: negative budget {entry!r}")
        out.append(entry if isinstance(entry, int) else (entry[0], entry[1]))
    return tuple(out)


def budgets_from_config(cfg, n_layers: int) -> Budgets:
    """`MemoryConfig` -> Budgets (unlimited when none of budget / budget_fraction / compression_ratio /
    budget_file). A budget file together with budget or budget_fraction is the allocation profile."""
    where = source_of(cfg, "budget_file", "memory.budget_file")
    profile = read_budget_file(cfg.budget_file, n_layers, where=where) if cfg.budget_file is not None else None
    if cfg.budget_fraction is not None:
        return Budgets.of_fraction(cfg.budget_fraction, n_layers, cfg.rho, profile, cfg.modality_aware)
    if cfg.budget is not None:
        return Budgets.sized(cfg.budget, n_layers, cfg.rho, profile, cfg.modality_aware)
    if cfg.compression_ratio is not None:
        return Budgets.ratio(cfg.compression_ratio, cfg.modality_aware)
    if profile is not None:
        return Budgets.of_layers(profile, cfg.rho, cfg.modality_aware)
    return Budgets.unlimited()
