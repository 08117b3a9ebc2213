"""Tar headers of a shard on object storage, read by range: the headers, and what lies between them only where
reading across is cheaper than another request and costs the run no second read of much payload.

A header says how far away the next one is, so the scan is a walk from header to header. Each ranged
read starts at a header that is not read yet (or where the last read ended, never before it: no byte of
a shard is fetched twice) and reaches as far as the members after it are expected to be small. The
expectation comes from the shard itself: samples repeat their layout (`jpg`, `cls`, `json`, ...), so
member i is expected to be as large as the member at the same place in the previous sample. A read
crosses a member only if it is expected to be at most `CROSS_MAX` bytes and the payload the scan has
read so far stays within `DOUBLE_READ` of the shard (that payload is read again by the writers);
otherwise the read stops at the next header and the member's data is skipped.

So a shard of large members costs one small read per run of small members (about one per sample:
e.g. a `cls` header, its data and the next `jpg` header), and a shard of tiny members (labels,
captions, token ids: headers are most of its bytes) is read whole, in windows of up to `WINDOW_MAX`.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable

from raymerge.webdataset.tarmembers import HeaderSource

BLOCK = tarfile.BLOCKSIZE
FIRST_WINDOW = 4096  # the first read of a shard, before anything is known about its members
WINDOW_MAX = 8 * 1024 * 1024  # the most one read holds in memory
CROSS_MAX = 4096  # a member larger than this is never read across
DOUBLE_READ = 1 / 32  # payload the scan may read across, as a share of the shard's bytes


def padded(size: int) -> int:
    return (size + BLOCK - 1) & -BLOCK


class RangeHeaders(HeaderSource):
    """A shard's bytes by slice for the header chain (`tarmembers.header_chain`), fetched by ranged reads
    (`read(start, end)`, one request each) as described above. Also a minimal read-only file
    (`seek`, `read`, `tell`) for `tarfile`, which reads the shards the direct parse does not take."""

    def __init__(self, read: Callable[[int, int], bytes], size: int) -> None:
        self._read, self.size = read, size
        self._buf, self._start = b"", 0  # the last read and where it starts
        self._end = 0  # the end of everything read so far: no read starts before it
        self.sizes: list[int] = []  # member sizes, in order, of the headers handed out
        self._keys: list[bytes] = []
        self._period = 0  # members in the last complete sample
        self._run = 0  # members of the current key so far
        self._next = 0  # where the header after the last one handed out is
        self.payload_read = 0  # payload bytes the scan has read (the writers read them again)
        self.requests = 0
        self._pos = 0  # file position for `read`

    # -- the header chain ---------------------------------------------------------------------------
    def __getitem__(self, part: slice) -> bytes:
        start, stop = part.start, min(part.stop, self.size)
        if start >= stop:
            return b""
        if not (self._start <= start and stop <= self._start + len(self._buf)):
            self._fetch(start, stop)
        data = self._buf[start - self._start : stop - self._start]
        if stop - start == BLOCK and start == self._next:
            self._learn(start, data)
        return data

    def _fetch(self, start: int, stop: int) -> None:
        """Read so that [start, stop) is in the buffer: from `start`, or from where the last read ended when
        the wanted bytes begin inside it (the part already read is kept, not fetched again)."""
        keep = b""
        if self._start <= start < self._start + len(self._buf):
            keep = self._buf[start - self._start :]
        begin = start + len(keep)
        end = min(self.size, max(stop, start + self._window(start)))
        data = self._read(begin, end) if end > begin else b""
        self.requests += 1
        self._buf, self._start = keep + data, start
        self._end = max(self._end, end)

    def _window(self, pos: int) -> int:
        """How far to read from the header at `pos`: through the members expected to be small after it,
        up to the header of the first one expected to be large."""
        if not self._period:
            return FIRST_WINDOW
        i = len(self.sizes)  # the member whose header is at pos
        reach, crossed = BLOCK, 0
        allowance = DOUBLE_READ * self.size - self.payload_read
        j = i
        while reach < WINDOW_MAX:
            expected = self.sizes[j - self._period * ((j - i) // self._period + 1)]
            if expected > CROSS_MAX or crossed + expected > allowance:
                break
            crossed += expected
            reach += padded(expected) + BLOCK
            j += 1
        return reach

    def _learn(self, pos: int, block: bytes) -> None:
        """A header handed out: its member's size and key, for the expectations of later reads."""
        if block == bytes(BLOCK):
            return
        try:
            size = int(block[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            return  # the chain will refuse it
        name = block[:100].split(b"\0", 1)[0]
        slash = name.rfind(b"/")
        dot = name.find(b".", slash + 1)
        key = name[:dot] if dot > 0 else name
        if self._keys and key != self._keys[-1]:
            self._period, self._run = self._run, 0
        self._keys = [key]
        self._run += 1
        data_end = pos + BLOCK + size
        self.payload_read += max(0, min(data_end, self._start + len(self._buf)) - (pos + BLOCK))
        self.sizes.append(size)
        self._next = pos + BLOCK + padded(size)

    # -- a file for tarfile ---------------------------------------------------------------------------
    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = pos if whence == 0 else (self._pos + pos if whence == 1 else self.size + pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        stop = self.size if n is None or n < 0 else min(self.size, self._pos + n)
        data = self[self._pos : stop] if stop > self._pos else b""
        self._pos += len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True
