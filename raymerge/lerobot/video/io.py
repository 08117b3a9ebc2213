"""Video files through fsspec: sources opened as PyAV containers, outputs written locally then uploaded.

A source's `moov` box is located and parsed first (`mp4`), so its sample table is known without reading
any frame; on remote storage every byte then comes through a `RangedFile`, fetched by range. mp4 muxing
seeks back to finish the header, so a remote output is written to a local temporary file first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator

import av
import numpy as np
from fsspec import AbstractFileSystem

from raymerge import directio, storage
from raymerge.errors import InvalidInput
from raymerge.lerobot.ranged import RangedFile
from raymerge.lerobot.video import mp4

COPY_BUFFER = 16 * 1024 * 1024
# PyAV's read size: a read past what a caller needs costs at most this on remote storage.
AVIO_BUFFER = 4096
# Index entries compared with the parsed sample table before trusting it.
CHECKED_ENTRIES = 64


class VideoSource:
    """One source mp4: its first video track's sample table (None when the file's layout is not one `mp4`
    models, e.g. a fragmented file), and its bytes, read by range on remote storage."""

    def __init__(self, fs: AbstractFileSystem, path: str, size: int | None = None) -> None:
        self.fs, self.path, self.where = fs, path, storage.url(fs, path)
        self.local = storage.is_local(fs)
        self.reader: RangedFile | None = None
        self.samples: mp4.Samples | None = None
        try:
            self.reader = None if self.local else RangedFile(fs, path, size, short_reads=True)
            self.samples = self._read_samples()
        except FileNotFoundError:
            raise InvalidInput(f"{self.where}: video file not found") from None
        except (struct.error, ValueError, IndexError):
            self.samples = None

    def _read_samples(self) -> mp4.Samples | None:
        if self.reader is not None:
            read, size = self.reader.fetch, self.reader.size
        else:
            f = open(self.path, "rb")  # noqa: SIM115 - closed below, before returning
            size = os.fstat(f.fileno()).st_size

            def read(start: int, end: int) -> bytes:
                f.seek(start)
                return f.read(end - start)

        try:
            found = mp4.locate_moov(read, size)
            if found is None:
                return None
            start, _, head, moov = found
        finally:
            if self.reader is None:
                f.close()
        if self.reader is not None:
            self.reader.keep(0, head)
            self.reader.keep(start, moov)
        return mp4.samples(moov)

    def plan(self, ranges: list[tuple[int, int]]) -> None:
        """Byte ranges about to be read through (fetched in large pieces on remote storage)."""
        if self.reader is not None:
            self.reader.plan(ranges)

    def sample_bytes(self, i: int) -> bytes:
        """The bytes of sample `i` (decode order) of the sample table."""
        assert self.samples is not None
        start, end = int(self.samples.pos[i]), int(self.samples.pos[i] + self.samples.size[i])
        if self.reader is not None:
            return self.reader.range(start, end)
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(end - start)

    @contextlib.contextmanager
    def open(self) -> Iterator[av.container.InputContainer]:
        """The file as a PyAV container with a video stream; the sample table is dropped if FFmpeg indexed
        the file differently."""
        try:
            source = self.path if self.reader is None else self.reader
            with av.open(source, "r", buffer_size=AVIO_BUFFER) as container:
                if not container.streams.video:
                    raise InvalidInput(f"{self.where}: no video stream in this file")
                if self.samples is not None and not _same_index(self.samples, container.streams.video[0]):
                    self.samples = None
                yield container
        except FileNotFoundError:
            raise InvalidInput(f"{self.where}: video file not found") from None
        except av.error.FFmpegError as e:
            raise InvalidInput(f"{self.where}: not a readable video file: {e}") from None


def _same_index(samples: mp4.Samples, stream: av.video.stream.VideoStream) -> bool:
    """Whether FFmpeg's index of the stream has the parsed table's length and, at evenly spread entries,
    its decode times and byte offsets."""
    entries = stream.index_entries
    if len(entries) != len(samples):
        return False
    picks = np.unique(np.linspace(0, len(samples) - 1, min(CHECKED_ENTRIES, len(samples))).astype(int)).tolist()
    return all(entries[i].timestamp == samples.dts[i] and entries[i].pos == samples.pos[i] for i in picks)


@contextlib.contextmanager
def open_input(fs: AbstractFileSystem, path: str, size: int | None = None) -> Iterator[av.container.InputContainer]:
    """The file as a PyAV container with a video stream; a missing or unreadable file is refused by name."""
    with VideoSource(fs, path, size).open() as container:
        yield container


@contextlib.contextmanager
def local_output(fs: AbstractFileSystem, path: str) -> Iterator[str]:
    """A local path to write; uploaded to `path` on `fs` when that is remote. A failed write leaves nothing."""
    if storage.is_local(fs):
        fs.makedirs(storage.parent(path), exist_ok=True)
        try:
            yield path
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            raise
        return
    with tempfile.TemporaryDirectory(prefix="raymerge-video-") as tmp:
        local = os.path.join(tmp, storage.basename(path))
        yield local
        fs.put_file(local, path)


def copy(src_fs: AbstractFileSystem, src_path: str, dst_fs: AbstractFileSystem, dst_path: str) -> None:
    """Whole-file copy; server-side when both ends are the same store."""
    if storage.is_local(dst_fs):
        dst_fs.makedirs(storage.parent(dst_path), exist_ok=True)
    if storage.is_local(src_fs) and storage.is_local(dst_fs):
        directio.copy_file(src_path, dst_path)
    elif src_fs == dst_fs:
        dst_fs.copy(src_path, dst_path)
    elif storage.is_local(src_fs):
        dst_fs.put_file(src_path, dst_path)
    elif storage.is_local(dst_fs):
        src_fs.get_file(src_path, dst_path)
    else:
        with src_fs.open(src_path, "rb") as r, dst_fs.open(dst_path, "wb") as w:
            shutil.copyfileobj(r, w, COPY_BUFFER)
