"""Video files through fsspec: sources opened as PyAV containers, outputs written locally then uploaded.

mp4 muxing seeks back to finish the header, so a remote output is written to a local temporary file first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

import av
from fsspec import AbstractFileSystem

from raymerge import directio, storage
from raymerge.errors import InvalidInput

COPY_BUFFER = 16 * 1024 * 1024


@contextlib.contextmanager
def open_input(fs: AbstractFileSystem, path: str) -> Iterator[av.container.InputContainer]:
    """The file as a PyAV container with a video stream; a missing or unreadable file is refused by name."""
    where = storage.url(fs, path)
    try:
        with contextlib.ExitStack() as stack:
            source = path if storage.is_local(fs) else stack.enter_context(fs.open(path, "rb"))
            container = stack.enter_context(av.open(source, "r"))
            if not container.streams.video:
                raise InvalidInput(f"{where}: no video stream in this file")
            yield container
    except FileNotFoundError:
        raise InvalidInput(f"{where}: video file not found") from None
    except av.error.FFmpegError as e:
        raise InvalidInput(f"{where}: not a readable video file: {e}") from None


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
