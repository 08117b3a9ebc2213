"""Every member of a tar from its headers alone: name, is a directory, data offset, data size.

Plain ustar archives (what WebDataset writers produce) are read by following the header chain and
parsing all headers together; anything else (PAX or GNU long names, links, damage, gzip) goes
through `tarfile`, which also words the errors. Payload is never read.
"""

from __future__ import annotations

import mmap
import tarfile
from dataclasses import dataclass
from typing import IO

import numpy as np
import pyarrow as pa

from raymerge.errors import InvalidInput

HEADER_WINDOW = 4096  # one page per read where the file cannot be mapped: small members' headers come together
PROBE_HEADERS = 64  # headers followed one by one before choosing how to find the rest of a mapped file
DENSE_STRIDE = 8 * 1024  # bytes per member below which every block of a mapped file is looked at at once
_OCTAL_WEIGHTS = 8 ** np.arange(10, -1, -1, dtype=np.int64)
_ZERO_BLOCK = bytes(tarfile.BLOCKSIZE)
_REGTYPE, _AREGTYPE, _DIRTYPE = tarfile.REGTYPE[0], tarfile.AREGTYPE[0], tarfile.DIRTYPE[0]
_MAGIC = np.frombuffer(b"ustar", dtype=np.uint8)


@dataclass(frozen=True)
class Members:
    """Every member in tar order, as columns: name, is a directory, data offset, data size."""

    names: pa.LargeStringArray
    is_dir: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray


def unsafe_reason(info: tarfile.TarInfo) -> str | None:
    """Why a member of this type must not be copied into a dataset (links, devices)."""
    if info.issym() or info.islnk():
        return "is a link; only regular files are allowed"
    if not (info.isreg() or info.isdir()):
        return "is a device, fifo or other special file; only regular files are allowed"
    return None


def open_tar(fileobj: IO[bytes], compressed: bool) -> tarfile.TarFile:
    """`tarfile`'s reader of a plain or gzip-compressed shard."""
    return tarfile.open(fileobj=fileobj, mode="r:gz" if compressed else "r:")


def ustar_members(fileobj: IO[bytes] | HeaderSource) -> Members | None:
    """Every member of a plain ustar archive (regular files and directories), or None if it is not one.

    Mirrors `tarfile.TarInfo.frombuf` for the headers it accepts (same checksum, name, prefix and
    directory rules), so both paths give the same members; payload is skipped, never read. Finding
    the headers is the only step that goes member by member (`header_chain`); the fields of all
    headers are checked and parsed together.
    """
    chain = header_chain(_blocks(fileobj))
    if chain is None:
        return None
    raw, starts, size = chain
    kind = raw[:, 156]
    plain = (kind == _REGTYPE) | (kind == _AREGTYPE) | (kind == _DIRTYPE)
    if not (plain.all() and (raw[:, 257:262] == _MAGIC).all() and _checksums_ok(raw)):
        return None
    names = _strings(raw[:, :100])
    if names is None:
        return None  # not UTF-8: tarfile's surrogate escapes
    is_dir = kind == _DIRTYPE
    if (kind == _AREGTYPE).any():  # old-style regular files, directories by a trailing slash
        is_dir |= (kind == _AREGTYPE) & np.array([n.endswith("/") for n in names.to_pylist()], dtype=bool)
    if (size[is_dir] != 0).any():
        return None
    if is_dir.any() or raw[:, 345].any():
        prefixes = _strings(raw[:, 345:500])
        if prefixes is None:
            return None
        names = _full_names(names.to_pylist(), prefixes.to_pylist(), is_dir.tolist())
    return Members(names, is_dir, starts + tarfile.BLOCKSIZE, size)


def header_chain(data: mmap.mmap | HeaderSource | _Window) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Header blocks (n x 512), their positions and member sizes, up to the end-of-archive block; None on
    anything odd (a cut or damaged archive, a size that is not a plain octal number).

    A mapped file takes the fast way where members are small (`_dense_chain`: every block at once) and
    follows sizes from header to header elsewhere, touching only the headers' pages.
    """
    if isinstance(data, mmap.mmap):
        return _mapped_chain(data)
    found = _follow(data, 0, None)
    if found is None:
        return None
    blocks, starts, sizes = found
    raw = np.frombuffer(b"".join(blocks), dtype=np.uint8).reshape(len(blocks), tarfile.BLOCKSIZE)
    return raw, np.asarray(starts, dtype=np.int64), np.asarray(sizes, dtype=np.int64)


def _follow(
    data: mmap.mmap | HeaderSource | _Window, pos: int, most: int | None
) -> tuple[list[bytes], list[int], list[int]] | None:
    """Header blocks, positions and sizes from `pos` to the end-of-archive block (or `most` headers, the
    last position then being where to go on); None on anything odd. The general path, one member a turn."""
    blocks: list[bytes] = []
    starts: list[int] = []
    sizes: list[int] = []
    while most is None or len(starts) < most:
        block = data[pos : pos + tarfile.BLOCKSIZE]
        if block == _ZERO_BLOCK or len(block) != tarfile.BLOCKSIZE:
            return (blocks, starts, sizes) if pos and len(block) == tarfile.BLOCKSIZE else None
        try:  # "%011o" + NUL or space, as tarfile writes it; anything else the general way
            size = int(block[124:135], 8) if block[135] in (0, 32) else _size(block)
        except ValueError:
            size = _size(block)
        if size is None or size < 0:
            return None
        blocks.append(block)
        starts.append(pos)
        sizes.append(size)
        pos += tarfile.BLOCKSIZE + ((size + tarfile.BLOCKSIZE - 1) & -tarfile.BLOCKSIZE)
    starts.append(pos)  # where the next header is
    return blocks, starts, sizes


def _mapped_chain(mapped: mmap.mmap) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """`header_chain` of a mapped file: the first headers one by one; where they show small members (a
    header every few blocks), the rest of the file all at once (`_dense_chain`), else one by one."""
    found = _follow(mapped, 0, PROBE_HEADERS)
    if found is None:
        return None
    blocks, starts, sizes = found
    parts = []
    if len(starts) > len(sizes):  # stopped after PROBE_HEADERS: the last start is where the next header is
        pos = starts.pop()
        rest = _dense_chain(mapped, pos) if pos <= DENSE_STRIDE * len(sizes) else None
        if rest is None:
            more = _follow(mapped, pos, None)
            if more is None:
                return None
            blocks, sizes = blocks + more[0], sizes + more[2]
            starts += more[1]
        else:
            parts.append(rest)
    head = np.frombuffer(b"".join(blocks), dtype=np.uint8).reshape(len(blocks), tarfile.BLOCKSIZE)
    first = (head, np.asarray(starts, dtype=np.int64), np.asarray(sizes, dtype=np.int64))
    if not parts:
        return first
    return (
        np.concatenate([first[0], parts[0][0]]),
        np.concatenate([first[1], parts[0][1]]),
        np.concatenate([first[2], parts[0][2]]),
    )


def _dense_chain(mapped: mmap.mmap, pos: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The headers from `pos` to the end-of-archive block, found all at once: every block that carries the
    ustar magic and a plain octal size is a candidate, and the candidates must chain (each header's size
    leads to the next candidate) up to a zero block. Anything else (a payload that holds a header, other
    size encodings, a cut file) returns None, and the headers are followed one by one instead, which
    finds or words the problem as before."""
    whole = np.frombuffer(mapped, dtype=np.uint8)
    n = (len(whole) - pos) // tarfile.BLOCKSIZE
    blocks = whole[pos : pos + n * tarfile.BLOCKSIZE].reshape(n, tarfile.BLOCKSIZE)
    magic = blocks[:, 257] == _MAGIC[0]
    for i in range(1, len(_MAGIC)):
        magic[magic] = blocks[magic, 257 + i] == _MAGIC[i]
    cand = np.flatnonzero(magic)
    if not len(cand) or cand[0] != 0:
        return None
    raw = blocks[cand]
    digits = raw[:, 124:135].astype(np.int64) - ord("0")
    if not (((digits >= 0) & (digits < 8)).all() and np.isin(raw[:, 135], (0, 32)).all()):
        return None
    size = digits @ _OCTAL_WEIGHTS
    following = cand + 1 + (size + tarfile.BLOCKSIZE - 1) // tarfile.BLOCKSIZE  # in blocks
    breaks = np.flatnonzero(following[:-1] != cand[1:])
    last = int(breaks[0]) if len(breaks) else len(cand) - 1
    end = int(following[last])
    if end >= n or blocks[end].any():  # no end-of-archive block where the chain leaves the candidates
        return None
    keep = slice(0, last + 1)
    return raw[keep], pos + cand[keep].astype(np.int64) * tarfile.BLOCKSIZE, size[keep]


def _blocks(fileobj: IO[bytes] | HeaderSource) -> mmap.mmap | HeaderSource | _Window:
    """The file's bytes by slice. A local file is mapped: a header costs a page fault, not a read call,
    and the payload between headers is never touched. A `HeaderSource` (object storage) reads its own
    ranges; other files are read a window at a time."""
    if isinstance(fileobj, HeaderSource):
        return fileobj
    try:
        return mmap.mmap(fileobj.fileno(), 0, access=mmap.ACCESS_READ)
    except (AttributeError, OSError, ValueError):  # no file descriptor, an empty or special file
        return _Window(fileobj)


class HeaderSource:
    """A file whose bytes the header chain asks for by slice, a header block at a time, and which reads them
    its own way (`rangescan.RangeHeaders` on object storage)."""

    def __getitem__(self, part: slice) -> bytes:
        raise NotImplementedError


class _Window:
    """Slices of a file that cannot be mapped (in memory), read `HEADER_WINDOW` at a time."""

    def __init__(self, fileobj: IO[bytes]) -> None:
        self.fileobj, self.window, self.start = fileobj, b"", 0

    def __getitem__(self, part: slice) -> bytes:
        if not self.start <= part.start <= part.stop <= self.start + len(self.window):
            self.fileobj.seek(part.start)
            self.window, self.start = self.fileobj.read(max(HEADER_WINDOW, part.stop - part.start)), part.start
        return self.window[part.start - self.start : part.stop - self.start]


def _size(block: bytes) -> int | None:
    """The member size field as tarfile reads it, or None if it is not a number."""
    try:
        return _octal(block[124:136])
    except ValueError:
        return None


def _checksums_ok(raw: np.ndarray) -> bool:
    """tarfile's (unsigned) header checksum: the byte sum with the checksum field counted as spaces."""
    field = raw[:, 148:156]
    digits = field[:, :6].astype(np.int64) - ord("0")
    common = ((digits >= 0) & (digits < 8)).all(axis=1) & (field[:, 6] == 0)  # "%06o\0 " (or "\0\0")
    stored = digits @ (8 ** np.arange(5, -1, -1, dtype=np.int64))
    try:
        for i in np.flatnonzero(~common).tolist():
            stored[i] = _octal(field[i].tobytes())
    except ValueError:
        return False
    sums = raw.sum(axis=1, dtype=np.uint32).astype(np.int64) - field.sum(axis=1, dtype=np.int64) + 8 * 32
    return bool(np.array_equal(sums, stored))


def _octal(field: bytes) -> int:
    if field[:1] in (b"\x80", b"\xff"):
        raise ValueError("base-256 number")
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _strings(fields: np.ndarray) -> pa.LargeStringArray | None:
    """NUL-terminated fixed-width fields (one per row) as strings, or None if one is not UTF-8."""
    is_nul = fields == 0
    lengths = np.where(is_nul.any(axis=1), is_nul.argmax(axis=1), fields.shape[1])
    bounds = np.zeros(len(fields) + 1, dtype=np.int64)
    np.cumsum(lengths, out=bounds[1:])
    width = int(lengths.max()) if len(lengths) else 0
    data = fields[:, :width][np.arange(width) < lengths[:, None]]
    strings = pa.LargeStringArray.from_buffers(len(fields), pa.py_buffer(bounds), pa.py_buffer(data))
    try:
        strings.validate(full=True)
    except pa.ArrowInvalid:
        return None
    return strings


def _full_names(names: list[str], prefixes: list[str], is_dir: list[bool]) -> pa.LargeStringArray:
    """Directory names without trailing slashes, each behind its ustar prefix field where one is set."""
    full = []
    for name, prefix, d in zip(names, prefixes, is_dir, strict=True):
        name = name.rstrip("/") if d else name
        full.append(f"{prefix}/{name}" if prefix else name)
    return pa.array(full, pa.large_string())


def tarfile_members(fileobj: IO[bytes], shard: str, compressed: bool) -> tuple[Members, Exception | None]:
    """Members as tarfile reads them, up to the first failure (a link or device, a bad header, a cut end).

    The failure is returned, not raised: the members before it are checked first, as they come first.
    """
    names: list[str] = []
    is_dir: list[bool] = []
    offsets: list[int] = []
    sizes: list[int] = []
    failure: Exception | None = None
    try:
        with open_tar(fileobj, compressed) as tar:
            for info in tar:
                reason = unsafe_reason(info) or _not_utf8(info.name)
                if reason:
                    raise InvalidInput(f"{shard}: member {info.name!r} {reason}")
                names.append(info.name)
                is_dir.append(info.isdir())
                offsets.append(info.offset_data)
                sizes.append(info.size)
            _check_end_marker(tar, shard)
    except (InvalidInput, tarfile.TarError, EOFError, OSError) as e:
        failure = e
    members = Members(
        pa.array(names, pa.large_string()),
        np.array(is_dir, dtype=bool),
        np.array(offsets, dtype=np.int64),
        np.array(sizes, dtype=np.int64),
    )
    return members, failure


def _not_utf8(name: str) -> str | None:
    """tarfile escapes bytes that are not UTF-8 as surrogates; keys must be text."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return "has a name that is not UTF-8"
    return None


def _check_end_marker(tar: tarfile.TarFile, shard: str) -> None:
    """tarfile stops quietly at a cut or damaged header; a complete tar ends with a zero block there."""
    tar.fileobj.seek(tar.offset)
    if tar.fileobj.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
        raise InvalidInput(f"{shard}: truncated or damaged at byte {tar.offset} (no end-of-archive marker there)")
