"""Training order that keeps the questions about one clip together.

A testbed clip (or a benchmark video) can carry several questions, one manifest row each. With
`group_by_media` the rows of one clip come out consecutively, clips in a fresh random order every
epoch, so a batch holds a clip's questions together and the full-context loss runs the clip's stream
once for all of them (`train.full_context`: packed questions). The order is a function of
(seed, epoch) only, so a resumed run replays it.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence

import torch
from torch.utils.data import Sampler


class MediaGroupedSampler(Sampler[int]):
    """Row indices: groups of rows sharing a media key, the groups shuffled per epoch.

    keys: one hashable media key per row (e.g. (video, audio, context)); rows keep their manifest
          order within a group.
    """

    def __init__(self, keys: Sequence[Hashable], seed: int = 0):
        groups: dict[Hashable, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        self.groups, self.seed, self.epoch, self.n = list(groups.values()), seed, 0, len(keys)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        for g in torch.randperm(len(self.groups), generator=generator).tolist():
            yield from self.groups[g]
