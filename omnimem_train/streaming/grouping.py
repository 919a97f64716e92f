"""Cut a stream of pieces into groups: a fixed number of tokens, or N seconds of media."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from omnimem_train.models.base import StreamPiece


def iter_groups(pieces: Iterable[StreamPiece], group_size: int | None = None,
                group_seconds: float | None = None) -> Iterator[StreamPiece]:
    """Regroup `pieces` lazily. Token groups may split a piece (e.g. a 2-s chunk); second groups
    close at the first piece whose `end_s` reaches the next multiple of `group_seconds`."""
    if group_seconds is not None:
        yield from _by_seconds(pieces, group_seconds)
    else:
        yield from _by_tokens(pieces, group_size)


def _by_tokens(pieces: Iterable[StreamPiece], size: int) -> Iterator[StreamPiece]:
    if size < 1:
        raise ValueError(f"group_size must be >= 1, got {size}")
    buf: list[StreamPiece] = []
    n = 0
    for piece in pieces:
        buf.append(piece)
        n += len(piece)
        if n < size:
            continue
        joined = StreamPiece.cat(buf)
        cut = (n // size) * size
        for s in range(0, cut, size):
            yield joined.slice(s, s + size)
        rest = joined.slice(cut, n)
        buf, n = ([rest], n - cut) if n > cut else ([], 0)
    if n:
        yield StreamPiece.cat(buf)


def _by_seconds(pieces: Iterable[StreamPiece], seconds: float) -> Iterator[StreamPiece]:
    if seconds <= 0:
        raise ValueError(f"group_seconds must be > 0, got {seconds}")
    buf: list[StreamPiece] = []
    boundary = seconds
    for piece in pieces:
        buf.append(piece)
        if piece.end_s is not None and piece.end_s >= boundary - 1e-9:
            yield StreamPiece.cat(buf)
            buf = []
            while boundary <= piece.end_s + 1e-9:
                boundary += seconds
    if buf:
        yield StreamPiece.cat(buf)
