"""Header reads by range (object storage) without a server: the same members as a local scan, no byte read
twice, small members read whole in few requests, large ones skipped; and the writers' coalescing rule."""

from __future__ import annotations

import io
import tarfile
from itertools import pairwise

import numpy as np
import pytest

from raymerge.webdataset.rangescan import RangeHeaders
from raymerge.webdataset.tarindex import scan_tar
from raymerge.webdataset.writer import GAP_SHARE, LOCAL_GAP, REMOTE_GAP, SPAN_MAX, spans
from tests.webdataset.util import tar_bytes


class Counted:
    """A shard in memory read by range, every range remembered."""

    def __init__(self, data: bytes) -> None:
        self.data, self.ranges = data, []

    def __call__(self, start: int, end: int) -> bytes:
        self.ranges.append((start, end))
        return self.data[start:end]

    def bytes_read(self) -> int:
        return sum(b - a for a, b in self.ranges)

    def overlaps(self) -> bool:
        seen = sorted(self.ranges)
        return any(b > c for (_, b), (c, _) in pairwise(seen))


def shard(samples: int, sizes: dict[str, int]) -> bytes:
    members = [
        (f"p/{i:05d}.{ext}", tarfile.REGTYPE, bytes([i % 250]) * size)
        for i in range(samples)
        for ext, size in sizes.items()
    ]
    return tar_bytes(members, tarfile.USTAR_FORMAT)


@pytest.mark.parametrize(
    "sizes",
    [{"jpg": 20_000, "cls": 1}, {"ids": 20}, {"a": 3000, "b": 70_000, "c": 5}, {"x": 0}],
)
def test_range_scan_reads_headers_once_and_finds_what_a_local_scan_finds(sizes):
    data = shard(120, sizes)
    read = Counted(data)
    ranged = scan_tar(RangeHeaders(read, len(data)), "s.tar", size=len(data))
    local = scan_tar(io.BytesIO(data), "s.tar", size=len(data))
    assert ranged["key"].equals(local["key"]) and ranged["exts"].equals(local["exts"])
    assert ranged["offsets"].tolist() == local["offsets"].tolist()
    assert not read.overlaps(), "no byte is fetched twice"
    payload = sum(sizes.values()) * 120
    headers = 512 * len(sizes) * 120
    if max(sizes.values()) > 4096:  # large members: their payload is mostly skipped
        assert read.bytes_read() <= 4 * headers + payload / 32 + 8192
    else:  # small members: the shard is read in a few large windows
        assert len(read.ranges) <= 8


def test_writer_reads_coalesce_small_gaps_only():
    # shard 0 (remote): members in order with header-sized gaps, then a member far away; shard 1 (local)
    src = np.array([0, 0, 0, 0, 1, 1])
    size = np.array([20_000, 1, 20_000, 30, 10, 10])
    offset = np.array([512, 21_504, 22_528, 10_000_000, 512, 512 + 10 + LOCAL_GAP + 1])
    remote = np.array([True, False])
    got = [(s, a, b, c.tolist()) for s, a, b, c in spans(src, offset, size, remote)]
    assert got == [
        (0, 512, 42_528, [0, 1, 2]),  # gaps of ~1 KB next to 20 KB members: read across
        (0, 10_000_000, 10_000_030, [3]),  # far: a read of its own
        (1, 512, 522, [4]),  # local: gaps up to LOCAL_GAP only
        (1, 512 + 10 + LOCAL_GAP + 1, 512 + 20 + LOCAL_GAP + 1, [5]),
    ]
    # tiny remote members a block apart: the gap is larger than an eighth of them, so each has its own read
    tiny = spans(np.zeros(3, np.int64), np.array([512, 1536, 2560]), np.array([20, 20, 20]), np.array([True]))
    assert [len(c) for *_, c in tiny] == [1, 1, 1]
    assert REMOTE_GAP * GAP_SHARE > 0
    # a long run is cut so that no read holds more than SPAN_MAX
    n = 5
    big = spans(
        np.zeros(n, np.int64), np.arange(n) * (SPAN_MAX // 2 + 512), np.full(n, SPAN_MAX // 2), np.array([True])
    )
    assert all(b - a <= SPAN_MAX for _, a, b, _ in big) and sum(len(c) for *_, c in big) == n
