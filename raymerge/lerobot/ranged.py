"""Input files on object storage read by byte range: each read fetches what it asks for, not a whole block
ahead (fsspec's default read-ahead fetches up to 50 MB, i.e. whole files, at the first read).

A reader can be told the ranges a caller will read through (`plan`): a read inside one fetches that range in
pieces of up to `PIECE` bytes, so a demuxer reading packet after packet costs one request per piece instead
of one per packet. Reads are ranged GETs of the filesystem's `cat_file`: no HEAD when the size is known.
"""

from __future__ import annotations

import contextlib
import io
from collections import OrderedDict
from collections.abc import Iterator
from typing import IO

from fsspec import AbstractFileSystem

from raymerge import storage

PIECE = 8 * 1024 * 1024  # largest single fetch inside a planned range
KEEP = 2 * PIECE  # bytes of fetched pieces kept for reads that go back a little


class RangedFile(io.RawIOBase):
    """A read-only, seekable file over ranged reads of `path` on `fs`. With `short_reads`, a read that what
    was fetched covers only in part returns that part (for callers that ask again, like FFmpeg's buffered
    reads, which ask for a whole buffer where they need a few bytes)."""

    def __init__(
        self, fs: AbstractFileSystem, path: str, size: int | None = None, *, short_reads: bool = False
    ) -> None:
        super().__init__()
        self.short_reads = short_reads
        self.fs, self.path = fs, path
        self.size = int(size) if size is not None else int(fs.size(path))
        self.name = storage.url(fs, path)
        self._pos = 0
        self._pieces: OrderedDict[int, bytes] = OrderedDict()
        self._kept = 0
        self._planned: list[tuple[int, int]] = []

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def plan(self, ranges: list[tuple[int, int]]) -> None:
        """Ranges the caller will read through: fetched in large pieces when first read."""
        self._planned = sorted((max(0, a), min(b, self.size)) for a, b in [*self._planned, *ranges] if b > a)

    def keep(self, start: int, data: bytes) -> None:
        """Bytes already fetched (e.g. while locating a header), served to later reads."""
        if data:
            self._pieces[start] = data
            self._kept += len(data)
            self._trim()

    def fetch(self, start: int, end: int) -> bytes:
        """Bytes [start, end) in one ranged request."""
        end = min(end, self.size)
        if end <= start:
            return b""
        return self.fs.cat_file(self.path, start=start, end=end)

    def range(self, start: int, end: int) -> bytes:
        """Bytes [start, end), from kept pieces where they hold them; the read position is left where it was
        (a demuxer may be reading through this file)."""
        before = self._pos
        self._pos = start
        parts = []
        try:
            while self._pos < min(end, self.size):
                parts.append(self.read(end - self._pos))
        finally:
            self._pos = before
        return b"".join(parts)

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self.size:
            start, data = self._piece(len(view) - done)
            at = self._pos - start
            n = min(len(view) - done, len(data) - at)
            view[done : done + n] = data[at : at + n]
            done += n
            self._pos += n
            if self.short_reads:
                break
        return done

    def _piece(self, wanted: int) -> tuple[int, bytes]:
        """A kept piece holding the current position, fetched now if none does."""
        pos = self._pos
        for start, data in reversed(self._pieces.items()):
            if start <= pos < start + len(data):
                self._pieces.move_to_end(start)
                return start, data
        end = pos + wanted
        for a, b in self._planned:
            if a <= pos < b:
                end = max(end, min(b, pos + PIECE))
                break
            if pos < a < end:  # stop where a planned range starts: it is fetched as a whole
                end = a
        data = self.fetch(pos, end)
        if not data:
            raise EOFError(f"{self.name}: no bytes at offset {pos} of {self.size}")
        self.keep(pos, data)
        return pos, data

    def _trim(self) -> None:
        while len(self._pieces) > 1 and self._kept > KEEP:
            _, data = self._pieces.popitem(last=False)
            self._kept -= len(data)


@contextlib.contextmanager
def open_input(fs: AbstractFileSystem, path: str, size: int | None = None) -> Iterator[IO[bytes]]:
    """A binary file to read: the file itself on local disk, a `RangedFile` on remote storage."""
    if storage.is_local(fs):
        with fs.open(path, "rb") as f:
            yield f
        return
    reader = RangedFile(fs, path, size)
    try:
        yield reader  # type: ignore[misc]
    finally:
        reader.close()
