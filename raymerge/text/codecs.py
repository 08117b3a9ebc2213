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


def open_stream(fs: AbstractFileSystem, path: str, codec: str | None) -> BinaryIO:
    """The file's bytes, decompressed while read when `codec` is set."""
    return fs.open(path, "rb", compression=codec)


def read_head(fs: AbstractFileSystem, path: str, codec: str | None, size: int = 4096) -> bytes:
    """The first bytes of the file's content (decompressed), to tell its format."""
    try:
        with open_stream(fs, path, codec) as f:
            return f.read(size)
    except Exception as e:  # each codec has its own error class (gzip.BadGzipFile, lzma.LZMAError, ZstdError...)
        if codec is None:
            raise
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
