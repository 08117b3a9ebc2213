"""Compressed text inputs: the codec a file name says, and a stream that decompresses as it is read.

The codec is inferred from the extension as fsspec (and so Hugging Face `datasets`) infers it:
`.gz` gzip, `.bz2` bz2, `.xz`/`.lzma` xz, `.zst` zstd (which needs the `zstandard` package). JSON, JSONL and
CSV may be compressed. A compressed stream cannot be entered in the middle, so each compressed file is one
scan task that reads it from the start, decompressing as it goes (docs/text.md says how that scales).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO

import fsspec.compression
from fsspec import AbstractFileSystem
from fsspec.utils import infer_compression

from raymerge import storage
from raymerge.errors import InvalidInput

CODECS = ("gzip", "bz2", "xz", "lzma", "zstd")
COMPRESSIBLE = ("jsonl", "json", "csv")
LINE_BLOCK = 1 << 20
HEAD_BYTES = 4096  # of content, enough to tell a format
HEAD_BLOCK = 256 << 10  # compressed bytes fetched at once to find them


def codec_of(path: str) -> str | None:
    """The compression a file name says (`x.jsonl.gz` -> gzip), or None."""
    return infer_compression(path)


def inner_path(path: str) -> str:
    """The name without its compression suffix: `x.jsonl.gz` -> `x.jsonl`, whose extension is the format."""
    return os.path.splitext(path)[0] if codec_of(path) else path


def check_codec(fs: AbstractFileSystem, path: str, codec: str, fmt: str | None) -> None:
    """Refuse what cannot be streamed: an unknown codec, zstd without its package, a compressed columnar file."""
    where = storage.url(fs, path)
    if codec not in CODECS:
        raise InvalidInput(f"{where}: {codec} archives are not read; compress with gzip, bz2, xz or zstd instead")
    if fmt is not None and fmt not in COMPRESSIBLE:
        raise InvalidInput(
            f"{where}: a compressed {fmt} file; only JSON, JSONL and CSV are read compressed "
            f"({fmt} compresses inside the file)"
        )
    if codec not in fsspec.compression.compr:
        raise InvalidInput(f"{where}: reading {codec} needs the `zstandard` package (pip install zstandard)")


def open_stream(
    fs: AbstractFileSystem, path: str, codec: str | None, size: int | None = None, block_size: int | None = None
) -> BinaryIO:
    """The file's bytes, decompressed while read when `codec` is set. `size` (from a listing) spares an object
    store the request that would ask for it; `block_size` bounds what one read fetches."""
    return fs.open(path, "rb", compression=codec, **open_options(fs, size, block_size))


def open_options(fs: AbstractFileSystem, size: int | None, block_size: int | None = None) -> dict[str, int]:
    """`fs.open` options for a file whose size is known: remote files only (a local file knows its size)."""
    if storage.is_local(fs):
        return {}
    out = {"size": size} if size is not None else {}
    return {**out, "block_size": block_size} if block_size else out


def read_head(fs: AbstractFileSystem, path: str, codec: str | None, file_size: int | None = None) -> bytes:
    """The first bytes of the file's content (decompressed), to tell its format: one ranged read of a plain
    file, never the whole object (`file_size`, from a listing, spares asking for its size)."""
    if codec is None:
        return b"" if file_size == 0 else fs.cat_file(path, start=0, end=HEAD_BYTES)
    try:
        with open_stream(fs, path, codec, file_size, HEAD_BLOCK) as f:
            return f.read(HEAD_BYTES)
    except Exception as e:  # each codec has its own error class (gzip.BadGzipFile, lzma.LZMAError, ZstdError...)
        raise InvalidInput(f"{storage.url(fs, path)}: not readable {codec} data: {e}") from None


def iter_lines(stream: BinaryIO) -> Iterator[bytes]:
    """The lines of a stream a block at a time, without needing the whole file in memory."""
    rest = b""
    while block := stream.read(LINE_BLOCK):
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest
