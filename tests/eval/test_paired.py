"""Paired bootstrap / McNemar comparisons of two cells on constructed cases with known answers."""

import json
import math
import random
import sys

import pytest

from omnimem_train.eval.grid import read_cells
from omnimem_train.eval.metrics import wilson_interval
from omnimem_train.eval.paired import (
    PairedDiff,
    compare_cells,
    format_comparisons,
    mcnemar_exact,
    pair_predictions,
    paired_bootstrap,
)

Z_95 = 1.959963984540054


def make_pair(n, wins, losses, both_right):
    """(a, b) of length n: `wins` a-only right, `losses` b-only right, `both_right` both right, rest both wrong."""
    a = [True] * wins + [False] * losses + [True] * both_right
    b = [False] * wins + [True] * losses + [True] * both_right
    rest = n - len(a)
    assert rest >= 0
    return a + [False] * rest, b + [False] * rest


def records(correct, prefix="clip"):
    return [{"id": f"{prefix}{i:04d}", "correct": c, "question_type": "x"} for i, c in enumerate(correct)]


def normal_ci(n, wins, losses):
    """Normal approximation of the paired diff's CI: mean +- z * sd(d) / sqrt(n), d in {-1, 0, 1}."""
    mean = (wins - losses) / n
    var = (wins + losses) / n - mean**2
    half = Z_95 * math.sqrt(var / n)
    return mean - half, mean + half


def test_identical_predictions():
    a, _ = make_pair(300, 0, 0, 180)
    r = paired_bootstrap(a, list(a))
    assert (r.diff, r.lo, r.hi, r.n, r.wins, r.losses) == (0.0, 0.0, 0.0, 300, 0, 0)
    assert r.verdict == "no significant difference"
    assert r.p_mcnemar == 1.0


def test_clear_win_matches_normal_approximation():
    # a right and b wrong on 60 of 600 clips, never the reverse: diff 0.1, sd sqrt(0.1 * 0.9 / 600)
    a, b = make_pair(600, 60, 0, 300)
    r = paired_bootstrap(a, b)
    assert r.diff == pytest.approx(0.1)
    assert (r.wins, r.losses, r.n) == (60, 0, 600)
    half = Z_95 * math.sqrt(0.1 * 0.9 / 600)
    assert (r.lo, r.hi) == pytest.approx((0.1 - half, 0.1 + half), abs=0.004)
    assert (r.lo, r.hi) == pytest.approx((0.076, 0.124), abs=0.004)
    assert r.lo > 0 and r.verdict == "beats"
    # the same case with the roles swapped
    s = paired_bootstrap(b, a)
    assert s.diff == pytest.approx(-0.1) and s.hi < 0 and s.verdict == "loses to"


def test_paired_ci_excludes_zero_where_unpaired_cis_overlap():
    # agree on 182 of 200 clips (130 both right); a wins 15, loses 3
    a, b = make_pair(200, 15, 3, 130)
    acc_a, acc_b = sum(a) / 200, sum(b) / 200
    assert (acc_a, acc_b) == (0.725, 0.665)
    lo_a, _ = wilson_interval(sum(a), 200)
    _, hi_b = wilson_interval(sum(b), 200)
    assert lo_a < hi_b  # the unpaired 95% intervals overlap
    r = paired_bootstrap(a, b)
    assert r.diff == pytest.approx(0.06)
    assert r.lo > 0 and r.verdict == "beats"
    assert (r.lo, r.hi) == pytest.approx(normal_ci(200, 15, 3), abs=0.01)
    assert r.p_mcnemar == pytest.approx(2 * sum(math.comb(18, i) for i in range(4)) / 2**18)
    assert r.p_mcnemar < 0.05


def test_symmetric_case_is_no_difference():
    a, b = make_pair(200, 20, 20, 100)
    r = paired_bootstrap(a, b)
    assert r.diff == 0.0
    assert r.lo < 0 < r.hi
    assert r.verdict == "no significant difference"
    assert (r.lo, r.hi) == pytest.approx(normal_ci(200, 20, 20), abs=0.01)
    assert r.p_mcnemar == 1.0


def test_deterministic_with_seed():
    a, b = make_pair(150, 12, 5, 70)
    r1, r2 = paired_bootstrap(a, b, seed=3), paired_bootstrap(a, b, seed=3)
    assert r1 == r2
    # another seed draws other replicates (CI ends interpolate between them: n_boot=199 makes the
    # 2.5% quantile fall between two order statistics)
    s1, s2 = paired_bootstrap(a, b, n_boot=199, seed=3), paired_bootstrap(a, b, n_boot=199, seed=4)
    assert s1.diff == s2.diff == r1.diff and (s1.lo, s1.hi) != (s2.lo, s2.hi)


def test_level_and_n_boot():
    a, b = make_pair(200, 15, 3, 130)
    r95, r99 = paired_bootstrap(a, b, level=0.95), paired_bootstrap(a, b, level=0.99)
    assert r99.lo < r95.lo < r95.diff < r95.hi < r99.hi
    assert paired_bootstrap(a, b, n_boot=500).n_boot == 500
    with pytest.raises(ValueError):
        paired_bootstrap(a, b[:-1])
    with pytest.raises(ValueError):
        paired_bootstrap([], [])
    with pytest.raises(ValueError):
        paired_bootstrap(a, b, level=1.0)
    with pytest.raises(ValueError):
        paired_bootstrap([0, 2], [1, 1])


def test_frozen():
    r = paired_bootstrap([True], [False])
    assert isinstance(r, PairedDiff)
    with pytest.raises(AttributeError):
        r.diff = 0.5


@pytest.mark.parametrize(("wins", "losses", "p"), [
    (10, 0, 2 * 0.5**10),
    (0, 10, 2 * 0.5**10),
    (0, 0, 1.0),
    (5, 5, 1.0),
    (1, 0, 1.0),
    (8, 2, 2 * (1 + 10 + 45) / 2**10),
])
def test_mcnemar_exact_known_values(wins, losses, p):
    assert mcnemar_exact(wins, losses) == pytest.approx(p, rel=1e-12)


def test_mcnemar_without_scipy(monkeypatch):
    """The math.comb fallback (used when scipy is not installed) gives the same exact values."""
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # `from scipy.stats import ...` -> ImportError
    assert mcnemar_exact(10, 0) == 2 * 0.5**10
    assert mcnemar_exact(15, 3) == pytest.approx(2 * sum(math.comb(18, i) for i in range(4)) / 2**18)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_record_order_does_not_matter():
    a, b = make_pair(240, 18, 6, 120)
    ra, rb = records(a), records(b)
    base = pair_predictions(ra, rb)
    r0 = paired_bootstrap(*base)
    rng = random.Random(0)
    for _ in range(3):
        sa, sb = ra[:], rb[:]
        rng.shuffle(sa)
        rng.shuffle(sb)
        assert pair_predictions(sa, sb) == base
        assert paired_bootstrap(*pair_predictions(sa, sb)) == r0
    # shuffling the paired samples themselves (same pairs, another order) changes nothing either
    idx = list(range(240))
    rng.shuffle(idx)
    assert paired_bootstrap([a[i] for i in idx], [b[i] for i in idx]) == r0


def test_pair_predictions_aligns_by_id():
    pa = [{"id": "x", "correct": True}, {"id": "y", "correct": False}]
    pb = [{"id": "y", "correct": True}, {"id": "x", "correct": True}]
    assert pair_predictions(pa, pb) == ([True, False], [True, True])


def test_mismatched_ids_are_an_error():
    ra, rb = records([True] * 5), records([True] * 5)
    with pytest.raises(ValueError, match="clip0004"):
        pair_predictions(ra, rb[:4])
    with pytest.raises(ValueError, match="only in a: 'clip0004'"):
        pair_predictions(ra, rb[:4])
    with pytest.raises(ValueError, match="only in b: 'other'"):
        pair_predictions(ra, rb + [{"id": "other", "correct": False}])
    with pytest.raises(ValueError, match="duplicate sample id 'clip0001'"):
        pair_predictions(ra + [ra[1]], rb)
    with pytest.raises(ValueError, match="duplicate sample id 'clip0002'"):
        pair_predictions(ra, rb + [rb[2]])
    with pytest.raises(ValueError, match="no 'correct'"):
        pair_predictions([{"id": "clip0000"}], rb[:1])


def test_compare_cells_and_format():
    a, b = make_pair(200, 15, 3, 130)
    c, _ = make_pair(200, 20, 20, 100)
    _, d = make_pair(200, 20, 20, 100)
    cells = {"omnimem-f0.0625-calibrated": records(a), "snapkv-f0.0625-uniform": records(b),
             "c": records(c), "d": records(d)}
    rows = compare_cells(cells, [("omnimem-f0.0625-calibrated", "snapkv-f0.0625-uniform"),
                                 ("snapkv-f0.0625-uniform", "omnimem-f0.0625-calibrated"), ("c", "d")])
    first, swapped, sym = rows
    assert {"a", "b", "diff", "ci", "n", "wins", "losses", "p_mcnemar", "verdict"} <= set(first)
    assert first["verdict"] == "beats" and first["ci"][0] > 0
    assert (first["n"], first["wins"], first["losses"]) == (200, 15, 3)
    assert first["diff"] == pytest.approx(0.06)
    assert (first["acc_a"], first["acc_b"]) == (0.725, 0.665)
    assert swapped["verdict"] == "loses to" and swapped["ci"][1] < 0
    assert swapped["p_mcnemar"] == first["p_mcnemar"]
    assert sym["verdict"] == "no significant difference"
    json.dumps(rows)  # rows are plain JSON

    table = format_comparisons(rows)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + 3 and lines[0].startswith("| a | b |") and "paired 95% CI" in lines[0]
    assert "omnimem-f0.0625-calibrated beats snapkv-f0.0625-uniform" in lines[2]
    assert "snapkv-f0.0625-uniform loses to omnimem-f0.0625-calibrated" in lines[3]
    assert "beats" not in lines[4] and "no significant difference" in lines[4]
    # "beats" follows the CI, not a row's verdict field
    overlap = dict(first, ci=[-0.01, 0.1], verdict="beats")
    assert "beats" not in format_comparisons([overlap])


def test_compare_cells_errors():
    cells = {"a": records([True, False]), "b": records([True])}
    with pytest.raises(KeyError, match="no cell 'z'"):
        compare_cells(cells, [("a", "z")])
    with pytest.raises(ValueError, match="a vs b: .*clip0001"):
        compare_cells(cells, [("a", "b")])


def test_read_cells(tmp_path):
    for name, correct in [("full", [True, True]), ("recency-16-uniform", [True, False])]:
        d = tmp_path / "cells" / name
        d.mkdir(parents=True)
        (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records(correct)))
    (tmp_path / "cells" / "unfinished").mkdir()
    cells = read_cells(tmp_path)
    assert sorted(cells) == ["full", "recency-16-uniform"]
    row, = compare_cells(cells, [("full", "recency-16-uniform")], n_boot=200)
    assert (row["wins"], row["losses"], row["n"]) == (1, 0, 2)
