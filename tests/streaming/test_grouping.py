"""Grouper (incremental) cuts exactly where iter_groups does, and a copy is independent."""

import pytest
import torch

from omnimem_train.models.base import Modality, StreamPiece
from omnimem_train.streaming.grouping import Grouper, iter_groups


def _piece(start: int, n: int, end_s: float | None = None) -> StreamPiece:
    ids = torch.arange(start, start + n)
    return StreamPiece(ids.float().unsqueeze(1), torch.full((n,), int(Modality.VISUAL)), ids.unsqueeze(0), end_s, ids)


def _pieces():
    sizes = [3, 0, 7, 1, 12, 5, 2]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [_piece(s, n, 2.0 * (i + 1)) for i, (s, n) in enumerate(zip(starts, sizes, strict=True))]


def _ids(groups):
    return [g.token_ids.tolist() for g in groups]


# 30 tokens in pieces of 3, 0, 7, 1, 12, 5, 2 tokens ending at 2, 4, ..., 14 s -> group token ranges
CUTS = {
    "size=4": (dict(group_size=4), [(i, i + 4) for i in range(0, 28, 4)] + [(28, 30)]),
    "size=100": (dict(group_size=100), [(0, 30)]),
    "4s": (dict(group_seconds=4.0), [(0, 3), (3, 11), (11, 28), (28, 30)]),
    "3s": (dict(group_seconds=3.0), [(0, 3), (3, 10), (10, 23), (23, 28), (28, 30)]),
}


@pytest.mark.parametrize("kw,ranges", CUTS.values(), ids=CUTS.keys())
def test_pushing_piece_by_piece_cuts_like_iter_groups(kw, ranges):
    grouper, pushed = Grouper(**kw), []
    for piece in _pieces():
        pushed += grouper.push(piece)
    pushed += grouper.flush()
    expected = [list(range(a, b)) for a, b in ranges]
    assert _ids(pushed) == expected and _ids(iter_groups(_pieces(), **kw)) == expected
    assert grouper.pending == 0 and grouper.flush() == []


def test_copy_is_independent():
    grouper = Grouper(group_size=10)
    grouper.push(_piece(0, 4))
    peek = grouper.copy()
    assert _ids(peek.push(_piece(4, 8))) == [list(range(10))] and _ids(peek.flush()) == [[10, 11]]
    assert grouper.pending == 4 and _ids(grouper.flush()) == [[0, 1, 2, 3]]


def test_bad_sizes():
    with pytest.raises(ValueError, match="group_size"):
        Grouper(group_size=0)
    with pytest.raises(ValueError, match="group_seconds"):
        Grouper(group_seconds=0)
