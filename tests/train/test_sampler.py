"""MediaGroupedSampler: every row once per epoch, a clip's rows consecutive, a new clip order per
epoch, the same order for the same (seed, epoch)."""

from omnimem_train.train.sampler import MediaGroupedSampler

KEYS = ["a", "b", "a", "c", "b", "a", "d"]


def _runs(order):
    runs = []
    for i in order:
        if not runs or KEYS[runs[-1][-1]] != KEYS[i]:
            runs.append([])
        runs[-1].append(i)
    return runs


def test_each_row_once_with_a_clips_rows_together_in_manifest_order():
    sampler = MediaGroupedSampler(KEYS, seed=3)
    order = list(sampler)
    assert len(sampler) == 7 and sorted(order) == list(range(7))
    runs = _runs(order)
    assert len(runs) == 4  # one run per clip
    assert {KEYS[r[0]]: r for r in runs} == {"a": [0, 2, 5], "b": [1, 4], "c": [3], "d": [6]}


def test_order_depends_on_seed_and_epoch_only():
    orders = set()
    for epoch in range(6):
        first, again = MediaGroupedSampler(KEYS, seed=1), MediaGroupedSampler(KEYS, seed=1)
        first.set_epoch(epoch)
        again.set_epoch(epoch)
        assert list(first) == list(again) == list(first)  # re-iterating replays the epoch
        orders.add(tuple(first))
    assert len(orders) > 1
