"""Write one output shard: gather member bytes by range reads from the input shards, stream a tar and its index.

The member order inside a sample is by extension; every header has the same integer mtime and
uid/gid 0, so a PAX header appears only when a name needs one. Payload is copied, never decoded.
"""

from __future__ import annotations

import gzip
import os
import tarfile
from collections.abc import Callable, Sequence
from typing import IO

import numpy as np
import polars as pl
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.webdataset.sources import Shard

REMOTE_GAP = 64 * 1024  # object storage: read across gaps this small rather than issuing another request
LOCAL_GAP = 4 * 1024  # local: enough to read a run of members across their headers and padding in one go
BATCH_BYTES = 16 * 1024 * 1024  # payload gathered and written per batch of samples
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
BATCH_MEMBERS = 1024  # bounds the gap bytes a batch of tiny members may read
SPAN_MAX = 32 * 1024 * 1024  # bound on the bytes one read holds in memory
END_OF_ARCHIVE = tarfile.NUL * (2 * tarfile.BLOCKSIZE)
# What tarfile writes for a regular file with mode 0644, uid/gid 0, no user/group names; the checksum
# field holds spaces while the sum is taken.
_USTAR_TEMPLATE = bytes(
    bytearray(100)
    + b"0000644\0"
    + b"0000000\0"
    + b"0000000\0"
    + bytes(12)
    + bytes(12)
    + b" " * 8
    + b"0"
    + bytes(100)
    + b"ustar\x0000"
    + bytes(32)
    + bytes(32)
    + bytes(16)
    + bytes(155)
    + bytes(12)
)
_TEMPLATE_SUM = sum(_USTAR_TEMPLATE)
_PADS = [tarfile.NUL * n for n in range(tarfile.BLOCKSIZE)]


def member_header(name: str, size: int, mtime: int) -> bytes:
    """A ustar header built directly when the name fits (the common case, and hot); tarfile otherwise.

    The checksum is the template's byte sum plus the bytes of the fields filled in.
    """
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= 100 and raw.isascii() and size < 8**11 and 0 <= mtime < 8**11:
        size_field, mtime_field = b"%011o\0" % size, b"%011o\0" % mtime
        checksum = _TEMPLATE_SUM + sum(raw) + sum(size_field) + sum(mtime_field)
        return b"".join(
            (
                raw,
                bytes(100 - len(raw)),
                _USTAR_TEMPLATE[100:124],
                size_field,
                mtime_field,
                b"%06o\0 " % checksum,
                _USTAR_TEMPLATE[156:],
            )
        )
    return _tarfile_header(name, size, mtime)


def _tarfile_header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def shard_members(rows: pl.DataFrame) -> pl.DataFrame:
    """Every member of the rows' samples in tar order: by sample, then by extension inside a sample."""
    return (
        rows.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("sample"), "names", "srcs", "offsets", "sizes")
        .explode("names", "srcs", "offsets", "sizes")
        .filter(pl.col("names").is_not_null())
        .sort("sample", "names", maintain_order=True)
    )


def spans(
    src: Sequence[int], offset: Sequence[int], size: Sequence[int], gap: Callable[[int], int]
) -> list[tuple[int, int, int, list[int]]]:
    """Coalesced reads (src, start, end, indices of the members covered), in source order.

    Members are taken in (shard, offset) order, so runs of one input shard become one read across
    headers and small gaps, whatever the output order.
    """
    out: list[tuple[int, int, int, list[int]]] = []
    for i in sorted(range(len(src)), key=lambda j: (src[j], offset[j])):
        s, o, z = src[i], offset[i], size[i]
        if out:
            last_src, start, end, covered = out[-1]
            if last_src == s and end <= o <= end + gap(s) and o + z - start <= SPAN_MAX:
                out[-1] = (s, start, max(end, o + z), covered)
                covered.append(i)
                continue
        out.append((s, o, o + z, [i]))
    return out


class RangeReader:
    """Byte ranges of input shards: one request per span; compressed shards are decompressed forward."""

    def __init__(self, shards: Sequence[Shard], filesystems: Sequence[AbstractFileSystem]) -> None:
        self.shards, self.filesystems = shards, filesystems
        self._local = [storage.is_local(fs) for fs in filesystems]
        self._gz: dict[int, IO[bytes]] = {}
        self._fds: dict[int, int] = {}

    def gap(self, src: int) -> int:
        """Bytes worth reading across rather than issuing another request: small locally, large on S3."""
        return LOCAL_GAP if self._local[self.shards[src].input] else REMOTE_GAP

    def read(self, src: int, start: int, end: int) -> bytes:
        shard = self.shards[src]
        fs = self.filesystems[shard.input]
        fd = self._fds.get(src)
        if fd is None and not shard.compressed and self._local[shard.input]:
            fd = self._fds[src] = os.open(shard.path, os.O_RDONLY)
        if fd is not None:
            data = os.pread(fd, end - start, start)
        elif not shard.compressed:
            data = fs.cat_file(shard.path, start=start, end=end)
        else:
            f = self._gz.get(src)
            if f is None:
                f = self._gz[src] = gzip.GzipFile(fileobj=fs.open(shard.path, "rb"))
            f.seek(start)
            data = f.read(end - start)
        if len(data) != end - start:
            raise OSError(
                f"{shard.name}: expected {end - start} bytes at {start}, got {len(data)}; did the input change?"
            )
        return data

    def close(self) -> None:
        for f in self._gz.values():
            f.close()
        for fd in self._fds.values():
            os.close(fd)
        self._gz.clear()
        self._fds.clear()


def member_data(
    reader: RangeReader, src: Sequence[int], offset: Sequence[int], size: Sequence[int]
) -> list[memoryview]:
    """The bytes of every member, in the order given, read span by span."""
    data: list[memoryview] = [memoryview(b"")] * len(src)
    for s, start, end, covered in spans(src, offset, size, reader.gap):
        buf = memoryview(reader.read(s, start, end))
        for i in covered:
            data[i] = buf[offset[i] - start : offset[i] - start + size[i]]
    return data


def write_pieces(out: IO[bytes], pieces: Sequence[bytes | memoryview]) -> None:
    """A local file gets the pieces by `writev` (no joined copy of the payload); any other file one joined write."""
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):
        out.write(b"".join(pieces))
        return
    for i in range(0, len(pieces), IOV_MAX):
        group = pieces[i : i + IOV_MAX]
        done = os.writev(fd, group)
        rest = memoryview(b"".join(group))[done:] if done < sum(map(len, group)) else b""
        while rest:
            rest = rest[os.write(fd, rest) :]


def output_keys(rows: pl.DataFrame, start: int, renumber_width: int | None) -> list[str]:
    if renumber_width is None:
        return rows["key"].to_list()
    return [f"{i:0{renumber_width}d}" for i in range(start, start + rows.height)]


def write_shard(
    rows: pl.DataFrame,
    reader: RangeReader,
    out: IO[bytes],
    *,
    keys: Sequence[str],
    mtime: int,
) -> tuple[np.ndarray, pl.DataFrame, pl.DataFrame]:
    """Stream the tar to `out`; return the Energon sample offsets (+ end), sample rows and part rows.

    Members go in batches: each batch is read in source order (coalesced ranges) and its tar bytes
    written with one call; positions and index rows are computed with array arithmetic, so the
    per-member work is a header and a slice.
    """
    members = shard_members(rows)
    sample = members["sample"].to_numpy()
    sample_list = sample.tolist()
    exts = members["names"].to_list()
    src, offset = members["srcs"].to_list(), members["offsets"].to_list()
    size = members["sizes"].to_numpy()
    sizes = size.tolist()
    pads = (-size % tarfile.BLOCKSIZE).tolist()
    starts = np.empty(len(exts), dtype=np.int64)  # where each member's header begins
    header_lens = np.empty(len(exts), dtype=np.int64)
    cum = np.concatenate([[0], np.cumsum(size)])
    pos, b = 0, 0
    while b < len(exts):
        e = min(b + BATCH_MEMBERS, max(b + 1, int(np.searchsorted(cum, cum[b] + BATCH_BYTES, side="right")) - 1))
        data = member_data(reader, src[b:e], offset[b:e], sizes[b:e])
        pieces: list[bytes | memoryview] = []
        for i, payload in zip(range(b, e), data, strict=True):
            header = member_header(f"{keys[sample_list[i]]}.{exts[i]}", sizes[i], mtime)
            pieces += (header, payload, _PADS[pads[i]])
            starts[i], header_lens[i] = pos, len(header)
            pos += len(header) + sizes[i] + pads[i]
        write_pieces(out, pieces)
        b = e
    write_pieces(out, [END_OF_ARCHIVE, tarfile.NUL * (-(pos + len(END_OF_ARCHIVE)) % tarfile.RECORDSIZE)])
    sample_offsets = np.append(starts[np.searchsorted(sample, np.arange(rows.height))], pos).astype("<u8")
    samples = pl.DataFrame(
        {
            "sample_key": list(keys),
            "byte_offset": sample_offsets[:-1].astype(np.int64),
            "byte_size": np.diff(sample_offsets).astype(np.int64),
        }
    )
    parts = pl.DataFrame(
        {
            "sample_index": sample,
            "part_name": exts,
            "content_byte_offset": starts + header_lens,
            "content_byte_size": size,
        }
    )
    return sample_offsets, samples, parts
