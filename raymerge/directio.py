"""Local output files written past the page cache (`O_DIRECT`), and one way to write pieces to any output.

Outputs are large, written once and not read back during a run. Written through the page cache, every
byte lands in a cached page that the kernel must later write back and then reclaim; once the inputs
fill the cache, that bookkeeping costs more CPU than the copy itself (on the 2-core reference machine,
buffered writes of 4 GB took 11.6 s of system time; the same bytes with `O_DIRECT`, 0.4 s). Here the
pieces are gathered into a page-aligned buffer (the one copy the page cache would have made) and
written in whole blocks straight to the device; the tail that is not a whole block goes last with
`O_DIRECT` cleared. A filesystem that refuses `O_DIRECT` gets ordinary buffered writes (`writev`).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from collections.abc import Sequence
from types import TracebackType
from typing import IO

from fsspec import AbstractFileSystem

from raymerge import storage

ALIGN = 4096  # covers every logical block size in use (512 and 4096)
BUFFER_BYTES = 8 * 1024 * 1024
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
_O_DIRECT = getattr(os, "O_DIRECT", 0)
Piece = bytes | bytearray | memoryview
_SPARE: list[mmap.mmap] = []  # buffers of files this process closed, for the next ones it writes
SPARE_BUFFERS = 2


class DirectFile:
    """A new local file, written sequentially. `direct=False` (or a filesystem without `O_DIRECT`)
    writes through the page cache; the bytes are the same either way."""

    def __init__(self, path: str, *, direct: bool = True, buffer_bytes: int = BUFFER_BYTES) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        self.direct = direct and bool(_O_DIRECT)
        if self.direct:
            try:
                self._fd = os.open(path, flags | _O_DIRECT, 0o644)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self.direct = False
        if not self.direct:
            self._fd = os.open(path, flags, 0o644)
        self._buffer = _take_buffer(buffer_bytes - buffer_bytes % ALIGN) if self.direct else None
        self._view = memoryview(self._buffer) if self._buffer is not None else memoryview(b"")
        self._fill = 0
        self._offset = 0  # file offset of the buffer's first byte
        self._spare = memoryview(b"")  # what `reserve` gave out when not direct

    def write(self, data: Piece) -> int:
        self.write_pieces([data])
        return len(data)

    def write_pieces(self, pieces: Sequence[Piece]) -> None:
        """Bytes-like pieces of single bytes, in order (payload slices go in without a joined copy)."""
        if not self.direct:
            _writev_all(self._fd, pieces)
            return
        view, cap, fill = self._view, len(self._view), self._fill
        for piece in pieces:
            n = len(piece)
            if n <= cap - fill:
                view[fill : fill + n] = piece
                fill += n
                continue
            data, at = memoryview(piece), 0
            while at < n:
                if fill == cap:
                    self._fill = fill
                    self._drain()
                    fill = self._fill
                take = min(n - at, cap - fill)
                view[fill : fill + take] = data[at : at + take]
                fill += take
                at += take
        self._fill = fill

    def reserve(self, n: int) -> memoryview:
        """`n` writable bytes after what is written so far, for the caller to fill and then `commit`: a batch
        laid out in place, with no copy from another buffer. Valid until the next call on this file."""
        if not self.direct:
            self._spare = memoryview(bytearray(n))
            return self._spare
        if n > len(self._view) - self._fill:
            self._drain()
        if n > len(self._view) - self._fill:  # more than the buffer holds: a larger one, kept
            grown = mmap.mmap(-1, -(-(self._fill + n) // ALIGN) * ALIGN)
            grown[: self._fill] = self._view[: self._fill]
            self._view, self._buffer = memoryview(grown), grown
        return self._view[self._fill : self._fill + n]

    def commit(self, n: int) -> None:
        """The first `n` bytes of the last `reserve` are written."""
        if not self.direct:
            _write_all(self._fd, self._spare[:n])
            self._spare = memoryview(b"")
            return
        self._fill += n

    def copy_from(self, fd: int, size: int) -> None:
        """`size` bytes of the file open as `fd`, from its start: read straight into the aligned buffer
        (direct), else copied by the kernel (`copy_file_range`)."""
        pos = 0
        while pos < size:
            if self.direct:
                if self._fill == len(self._view):
                    self._drain()
                room = self._view[self._fill : self._fill + min(len(self._view) - self._fill, size - pos)]
                got = os.preadv(fd, [room], pos)
                self._fill += got
            else:
                got = os.copy_file_range(fd, self._fd, size - pos, pos)
            if got == 0:
                raise OSError(errno.EIO, f"source ended {size - pos} bytes early; did it change?")
            pos += got

    def _drain(self) -> None:
        """Write the buffer's whole blocks; keep the rest at its start."""
        whole = self._fill - self._fill % ALIGN
        if not whole:
            return
        try:
            _write_all(self._fd, self._view[:whole], self._offset)
        except OSError as e:  # EINVAL: a device that takes no direct writes after all; go buffered
            if e.errno != errno.EINVAL:
                raise
            self._go_buffered()
            _write_all(self._fd, self._view[:whole], self._offset)
        self._offset += whole
        rest = self._fill - whole
        self._view[:rest] = self._view[whole : self._fill]
        self._fill = rest

    def _go_buffered(self) -> None:
        fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~_O_DIRECT)

    def close(self, *, flush: bool = True) -> None:
        """Write what is buffered (unless `flush` is False: a failed write abandons the file) and close."""
        if self._fd < 0:
            return
        try:
            if flush and self.direct:
                self._drain()
                if self._fill:
                    self._go_buffered()
                    _write_all(self._fd, self._view[: self._fill], self._offset)
                    self._fill = 0
            if flush and self._buffer is not None and len(_SPARE) < SPARE_BUFFERS:
                _SPARE.append(self._buffer)
        finally:
            os.close(self._fd)
            self._fd = -1
            # dropped, not closed: a failed write's traceback may still hold a slice of the buffer
            self._view, self._buffer = memoryview(b""), None

    def __enter__(self) -> DirectFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(flush=exc is None)


class JoinedSink:
    """Any other file (object storage, memory): the pieces joined into one write."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self._spare = memoryview(b"")  # what `reserve` gave out

    def write(self, data: Piece) -> int:
        return self._f.write(data)

    def write_pieces(self, pieces: Sequence[Piece]) -> None:
        self._f.write(b"".join(pieces))

    def reserve(self, n: int) -> memoryview:
        self._spare = memoryview(bytearray(n))
        return self._spare

    def commit(self, n: int) -> None:
        self._f.write(self._spare[:n])
        self._spare = memoryview(b"")

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JoinedSink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


Sink = DirectFile | JoinedSink


def _take_buffer(size: int) -> mmap.mmap:
    """An aligned buffer of `size` bytes: one a closed file left (`_SPARE`), whose pages are already
    there, else a new one. Each page of a new mapping costs a fault when first written (on the reference
    machine ~3 ms an 8 MiB buffer, once per output shard)."""
    for i, spare in enumerate(_SPARE):
        if len(spare) == size:
            return _SPARE.pop(i)
    return mmap.mmap(-1, size)


_FICLONE = 0x40049409  # linux/fs.h: share the source's extents


def copy_file(src: str, dst: str) -> None:
    """A local whole-file copy: shared extents where the filesystem can (as `cp` does on XFS or btrfs),
    else read into the aligned buffer and written past the page cache."""
    with open(src, "rb") as r:
        with open(dst, "wb") as w:
            try:
                fcntl.ioctl(w.fileno(), _FICLONE, r.fileno())
                return
            except OSError:  # not this filesystem, or across filesystems
                pass
        with DirectFile(dst) as out:
            out.copy_from(r.fileno(), os.fstat(r.fileno()).st_size)


def open_output(fs: AbstractFileSystem, path: str) -> Sink:
    """A new output file: past the page cache when local, else the filesystem's own writer."""
    if storage.is_local(fs):
        return DirectFile(path)
    return JoinedSink(fs.open(path, "wb"))


def _write_all(fd: int, data: memoryview, offset: int | None = None) -> None:
    """All of `data`, at `offset` (or the file position)."""
    while len(data):
        done = os.write(fd, data) if offset is None else os.pwrite(fd, data, offset)
        if done <= 0:
            raise OSError(errno.EIO, "write made no progress")
        data = data[done:]
        offset = None if offset is None else offset + done


def _writev_all(fd: int, pieces: Sequence[Piece]) -> None:
    for i in range(0, len(pieces), IOV_MAX):
        group = pieces[i : i + IOV_MAX]
        done = os.writev(fd, group)
        if done < sum(map(len, group)):
            _write_all(fd, memoryview(b"".join(group))[done:])
