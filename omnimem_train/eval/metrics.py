"""Metrics of one evaluation cell, computed from its prediction records alone (pure functions).

A prediction record is the dict written as one line of a cell's predictions.jsonl; the fields
used here are `correct` (bool), `question_type` (str), `groups` ({field: value}, optional: the
`eval.group_by` fields of the sample), `retained_kv_bytes`,
`retained_total_bytes` (ints: memory the stream left behind) and `seconds` (the sample's wall
time: media decoding, streaming and option scoring).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


def accuracy(correct: Sequence[bool]) -> float:
    """Fraction of true values (0.0 for an empty sequence)."""
    return sum(bool(c) for c in correct) / len(correct) if correct else 0.0


def wilson_interval(k: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials ((0, 1) when n == 0).

    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at k = 0 or k = n,
    which matters for the small sample counts of smoke runs."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def accuracy_with_ci(correct: Sequence[bool], z: float = Z_95) -> dict:
    """{"n", "correct", "accuracy", "ci": [low, high]} (Wilson, 95% by default)."""
    k, n = sum(bool(c) for c in correct), len(correct)
    lo, hi = wilson_interval(k, n, z)
    return {"n": n, "correct": k, "accuracy": k / n if n else 0.0, "ci": [lo, hi]}


def per_type(predictions: Sequence[dict], z: float = Z_95) -> dict[str, dict]:
    """accuracy_with_ci per `question_type`, keys sorted."""
    return _per_value(predictions, lambda p: p["question_type"], z)


def per_group(predictions: Sequence[dict], z: float = Z_95) -> dict[str, dict[str, dict]]:
    """{field: {value: accuracy_with_ci}} over the records' `groups` (the `eval.group_by` fields);
    values in order of first appearance, {} when no record has groups."""
    keys = list(dict.fromkeys(k for p in predictions for k in p.get("groups", {})))
    return {k: _per_value(predictions, lambda p, k=k: p.get("groups", {}).get(k), z, sort=False) for k in keys}


def _per_value(predictions: Sequence[dict], value, z: float, sort: bool = True) -> dict[str, dict]:
    groups: dict[str, list[bool]] = {}
    for p in predictions:
        groups.setdefault(str(value(p)), []).append(bool(p["correct"]))
    return {t: accuracy_with_ci(groups[t], z) for t in (sorted(groups) if sort else groups)}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def compute_metrics(predictions: Sequence[dict], z: float = Z_95) -> dict:
    """Everything metrics.json holds about the predictions themselves:

    n, correct, accuracy, ci ([low, high], Wilson), ci_level, per_type (the same per question type),
    per_group (the same per value of each `eval.group_by` field, when the records have any),
    kv_bytes_mean / kv_bytes_max (retained KV cache per sample, all layers), total_bytes_mean
    (KV + the policy's per-token state), stream_seconds_mean, seconds (sum of per-sample wall
    times) and samples_per_s (n / seconds)."""
    overall = accuracy_with_ci([p["correct"] for p in predictions], z)
    seconds = sum(float(p["seconds"]) for p in predictions)
    kv = [int(p["retained_kv_bytes"]) for p in predictions]
    return {
        **overall,
        "ci_level": round(math.erf(z / math.sqrt(2)), 4),
        "per_type": per_type(predictions, z),
        **({"per_group": groups} if (groups := per_group(predictions, z)) else {}),
        "kv_bytes_mean": _mean(kv),
        "kv_bytes_max": max(kv, default=0),
        "total_bytes_mean": _mean([int(p["retained_total_bytes"]) for p in predictions]),
        "stream_seconds_mean": _mean([float(p["stream_seconds"]) for p in predictions]),
        "seconds": seconds,
        "samples_per_s": len(predictions) / seconds if seconds > 0 else 0.0,
    }
