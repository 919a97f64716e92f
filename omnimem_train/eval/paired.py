"""Paired comparisons of two eval cells on the same samples (pure functions).

Two cells of the grid (`grid.py`) answer the same questions about the same clips, so "method A
beats method B" is a claim about the per-sample difference `correct_a - correct_b` (1: A right and
B wrong, a "win"; -1: a "loss"; 0: both right or both wrong). Comparing the two cells' separate
accuracy intervals throws that pairing away: the clips both get right (or both get wrong) are
noise to an unpaired comparison and carry no information about the difference. Here:

* `paired_bootstrap(a, b)`: the percentile bootstrap CI of mean(a) - mean(b) when the SAMPLE
  INDICES are resampled jointly (each bootstrap replicate draws n clips with replacement and
  scores both methods on the same draw). Verdict "beats" only when the whole CI is above 0.
* `mcnemar_exact(wins, losses)`: the exact two-sided McNemar p-value (a binomial test of the
  discordant pairs), a second view of the same question.
* `pair_predictions(pred_a, pred_b)`: two cells' predictions.jsonl records aligned by "id"; a
  sample missing from one side or a duplicate id is an error, never silently dropped.
* `compare_cells(cells, pairs)` -> rows, `format_comparisons(rows)` -> a Markdown table.

    from omnimem_train.eval.grid import read_cells
    from omnimem_train.eval.paired import compare_cells, format_comparisons

    cells = read_cells("checkpoints/eval/testbed")   # {cell name: prediction records}
    rows = compare_cells(cells, [("omnimem-f0.0625-calibrated", "snapkv-f0.0625-uniform")])
    print(format_comparisons(rows))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

VERDICT_BEATS = "beats"
VERDICT_LOSES = "loses to"
VERDICT_NONE = "no significant difference"

# Bootstrap index draws are generated in chunks of at most this many ints (memory stays bounded
# for large n or n_boot; the chunking depends only on n and n_boot, so results stay deterministic).
_CHUNK_ELEMENTS = 1 << 22


def mcnemar_exact(wins: int, losses: int) -> float:
    """Exact two-sided McNemar p-value: 2 * P(X <= min(wins, losses)), X ~ Binomial(wins + losses, 1/2),
    capped at 1 (1.0 when there are no discordant pairs)."""
    if wins < 0 or losses < 0:
        raise ValueError(f"need wins, losses >= 0, got {wins}, {losses}")
    m = wins + losses
    if m == 0:
        return 1.0
    k = min(wins, losses)
    try:
        from scipy.stats import binomtest
    except ImportError:
        tail = sum(math.comb(m, i) for i in range(k + 1)) / 2**m  # exact integers, one division
        return min(1.0, 2.0 * tail)
    return float(binomtest(k, m, 0.5, alternative="two-sided").pvalue)


@dataclass(frozen=True)
class PairedDiff:
    """mean(a) - mean(b) over n paired samples, with its bootstrap CI at `level`.

    wins: samples a got right and b wrong; losses: the reverse."""

    diff: float
    lo: float
    hi: float
    n: int
    wins: int
    losses: int
    level: float = 0.95
    n_boot: int = 10000

    @property
    def verdict(self) -> str:
        """"beats" if the CI lies above 0, "loses to" if below, else "no significant difference"."""
        if self.lo > 0:
            return VERDICT_BEATS
        if self.hi < 0:
            return VERDICT_LOSES
        return VERDICT_NONE

    @property
    def p_mcnemar(self) -> float:
        return mcnemar_exact(self.wins, self.losses)


def _as_bool_array(x: Sequence[bool], name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d sequence of booleans, got shape {arr.shape}")
    if arr.dtype != bool:
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name}: expected booleans (or 0/1), got values {sorted(set(arr.tolist()))[:5]}")
        arr = arr.astype(bool)
    return arr


def paired_bootstrap(a: Sequence[bool], b: Sequence[bool], n_boot: int = 10000, seed: int = 0,
                     level: float = 0.95) -> PairedDiff:
    """Paired percentile bootstrap of mean(a) - mean(b); a[i] and b[i] are the same sample.

    Each of the `n_boot` replicates draws n sample indices with replacement (one
    `np.random.default_rng(seed)`) and takes the mean of d = a - b over them, i.e. both methods
    are scored on the same resampled clips. The CI is the (1-level)/2 and (1+level)/2 quantiles of
    the replicates. The statistic depends only on the multiset of the d[i], so the samples are put
    in a canonical order (sorted d) before resampling: the result does not depend on the order in
    which the samples were given, only on (n, wins, losses, n_boot, seed, level)."""
    a_arr, b_arr = _as_bool_array(a, "a"), _as_bool_array(b, "b")
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired samples need equal lengths, got {a_arr.size} and {b_arr.size}")
    n = int(a_arr.size)
    if n == 0:
        raise ValueError("no samples to compare")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = np.sort(a_arr.astype(np.int8) - b_arr.astype(np.int8))
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    diff = (wins - losses) / n

    rng = np.random.default_rng(seed)
    sums = np.empty(n_boot, dtype=np.int64)
    chunk = max(1, min(n_boot, _CHUNK_ELEMENTS // n))
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        sums[start:stop] = d[idx].sum(axis=1, dtype=np.int64)
    alpha = (1.0 - level) / 2.0
    lo_s, hi_s = np.quantile(sums, [alpha, 1.0 - alpha])
    return PairedDiff(diff=diff, lo=float(lo_s) / n, hi=float(hi_s) / n, n=n, wins=wins, losses=losses,
                      level=level, n_boot=n_boot)


def _index_by_id(records: list[dict], side: str) -> dict:
    out: dict = {}
    for i, rec in enumerate(records):
        if "id" not in rec:
            raise ValueError(f"{side}: record {i} has no 'id'")
        if "correct" not in rec:
            raise ValueError(f"{side}: record {rec['id']!r} has no 'correct'")
        if rec["id"] in out:
            raise ValueError(f"{side}: duplicate sample id {rec['id']!r}")
        out[rec["id"]] = bool(rec["correct"])
    return out


def _some(ids, k: int = 5) -> str:
    ids = sorted(ids, key=str)
    more = f" (and {len(ids) - k} more)" if len(ids) > k else ""
    return ", ".join(repr(i) for i in ids[:k]) + more


def pair_predictions(pred_a: list[dict], pred_b: list[dict]) -> tuple[list[bool], list[bool]]:
    """Two cells' prediction records aligned by "id" -> (correct_a, correct_b), in sorted-id order.

    Both sides must hold exactly the same sample ids, each once: a duplicate id, or an id on one
    side only, is a ValueError naming it (a comparison on different samples is not paired)."""
    ia, ib = _index_by_id(pred_a, "a"), _index_by_id(pred_b, "b")
    only_a, only_b = ia.keys() - ib.keys(), ib.keys() - ia.keys()
    if only_a or only_b:
        parts = []
        if only_a:
            parts.append(f"only in a: {_some(only_a)}")
        if only_b:
            parts.append(f"only in b: {_some(only_b)}")
        raise ValueError("the two cells were not evaluated on the same samples; " + "; ".join(parts))
    ids = sorted(ia, key=str)
    return [ia[i] for i in ids], [ib[i] for i in ids]


def compare_cells(cells: dict[str, list[dict]], pairs: list[tuple[str, str]], n_boot: int = 10000,
                  seed: int = 0, level: float = 0.95) -> list[dict]:
    """One row per (a, b) in `pairs`: {"a", "b", "acc_a", "acc_b", "diff", "ci": [lo, hi], "level",
    "n", "wins", "losses", "p_mcnemar", "verdict"} (verdict: a "beats" / "loses to" b, or
    "no significant difference"). `cells` maps a cell name to its prediction records."""
    rows = []
    for name_a, name_b in pairs:
        for name in (name_a, name_b):
            if name not in cells:
                raise KeyError(f"no cell {name!r}; known: {', '.join(sorted(cells)) or 'none'}")
        try:
            a, b = pair_predictions(cells[name_a], cells[name_b])
        except ValueError as e:
            raise ValueError(f"{name_a} vs {name_b}: {e}") from e
        r = paired_bootstrap(a, b, n_boot=n_boot, seed=seed, level=level)
        rows.append({
            "a": name_a, "b": name_b, "acc_a": sum(a) / r.n, "acc_b": sum(b) / r.n, "diff": r.diff,
            "ci": [r.lo, r.hi], "level": level, "n": r.n, "wins": r.wins, "losses": r.losses,
            "p_mcnemar": r.p_mcnemar, "verdict": r.verdict,
        })
    return rows


def _verdict_text(row: dict) -> str:
    lo, hi = row["ci"]
    if lo > 0:
        return f"{row['a']} beats {row['b']}"
    if hi < 0:
        return f"{row['a']} loses to {row['b']}"
    return VERDICT_NONE


def _p_str(p: float) -> str:
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def format_comparisons(rows: list[dict]) -> str:
    """The rows as a Markdown table. The verdict column says "beats" only when the paired CI
    excludes 0 on the positive side (recomputed from "ci", whatever a row's "verdict" says)."""
    level = rows[0].get("level", 0.95) if rows else 0.95
    pct = f"{100 * level:g}%"
    head = ["a", "b", "acc a", "acc b", "diff (a - b)", f"paired {pct} CI", "wins / losses", "n",
            "McNemar p", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        acc_a = f"{r['acc_a']:.3f}" if "acc_a" in r else "-"
        acc_b = f"{r['acc_b']:.3f}" if "acc_b" in r else "-"
        cells = [r["a"], r["b"], acc_a, acc_b, f"{r['diff']:+.3f}", f"[{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]",
                 f"{r['wins']} / {r['losses']}", str(r["n"]), _p_str(r["p_mcnemar"]), _verdict_text(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["PairedDiff", "compare_cells", "format_comparisons", "mcnemar_exact", "pair_predictions",
           "paired_bootstrap"]
