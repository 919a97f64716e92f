"""Cut a stream of pieces into groups: a fixed number of tokens, or N seconds of media.

`Grouper` is the incremental form (pieces pushed as they arrive, e.g. by a live session);
`iter_groups` the lazy one over an iterable. Both cut at exactly the same places.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from omnimem_train.models.base import StreamPiece


class Grouper:
    """Regroup pushed pieces. Token groups may split a piece (e.g. a 2-s chunk); second groups
    close at the first piece whose `end_s` reaches the next multiple of `group_seconds`.

        g = Grouper(group_size=1024)
        for piece in pieces:
            for group in g.push(piece): ...   # every group the piece completed
        for group in g.flush(): ...           # the last, partial group (end of stream)
    """

    def __init__(self, group_size: int | None = None, group_seconds: float | None = None):
        if group_seconds is not None:
            if group_seconds <= 0:
                raise ValueError(f"group_seconds must be > 0, got {group_seconds}")
        elif group_size is None or group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.group_size, self.group_seconds = group_size, group_seconds
        self.buf: list[StreamPiece] = []  # pieces (or a piece's rest) not yet in a finished group
        self.n = 0  # tokens in `buf`
        self.boundary = group_seconds  # media time that closes the current group (seconds mode)

    @property
    def pending(self) -> int:
        """Tokens pushed but not yet returned in a group."""
        return self.n

    def push(self, piece: StreamPiece) -> list[StreamPiece]:
        self.buf.append(piece)
        self.n += len(piece)
        if self.group_seconds is not None:
            return self._by_seconds(piece)
        return self._by_tokens()

    def flush(self) -> list[StreamPiece]:
        """The partial group left at the end of the stream (none if nothing is pending)."""
        # As before the refactor: a token group needs tokens, a seconds group any piece (even empty).
        left = self.buf if self.group_seconds is not None else self.n
        groups = [StreamPiece.cat(self.buf)] if left else []
        self.buf, self.n = [], 0
        return groups

    def copy(self) -> Grouper:
        """An independent grouper in the same state (pieces are never modified, so they are shared)."""
        other = Grouper.__new__(Grouper)
        other.__dict__.update(self.__dict__, buf=list(self.buf))
        return other

    def _by_tokens(self) -> list[StreamPiece]:
        size = self.group_size
        if self.n < size:
            return []
        joined = StreamPiece.cat(self.buf)
        cut = (self.n // size) * size
        groups = [joined.slice(s, s + size) for s in range(0, cut, size)]
        rest = joined.slice(cut, self.n)
        self.buf, self.n = ([rest], self.n - cut) if self.n > cut else ([], 0)
        return groups

    def _by_seconds(self, piece: StreamPiece) -> list[StreamPiece]:
        if piece.end_s is None or piece.end_s < self.boundary - 1e-9:
            return []
        group = StreamPiece.cat(self.buf)
        self.buf, self.n = [], 0
        while self.boundary <= piece.end_s + 1e-9:
            self.boundary += self.group_seconds
        return [group]


def iter_groups(pieces: Iterable[StreamPiece], group_size: int | None = None,
                group_seconds: float | None = None) -> Iterator[StreamPiece]:
    """Regroup `pieces` lazily (see `Grouper`)."""
    grouper = Grouper(group_size, group_seconds)
    for piece in pieces:
        yield from grouper.push(piece)
    yield from grouper.flush()
