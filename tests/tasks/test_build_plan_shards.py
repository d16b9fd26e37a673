"""The build's shard plan: contiguous shards whose sizes differ by at most one."""

from __future__ import annotations

import pytest

from tasks.build_corpus import shard_of, shard_sizes


@pytest.mark.parametrize(("records", "size"), [(300, 32), (24, 3), (5, 3), (1, 32), (97, 10), (64, 64)])
def test_shards_are_contiguous_and_even(records: int, size: int) -> None:
    num = -(-records // size)
    assigned = [shard_of(i, records, num) for i in range(records)]
    assert assigned == sorted(assigned) and set(assigned) == set(range(num))  # contiguous, none empty
    sizes = shard_sizes(records, size)
    assert sum(sizes) == records and max(sizes) <= size and max(sizes) - min(sizes) <= 1


def test_three_hundred_records_make_ten_equal_shards() -> None:
    assert shard_sizes(300, 32) == [30] * 10  # not 9 × 32 + 12, which leaves one worker idle at the end
