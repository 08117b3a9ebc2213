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


def ustar_members(fileobj: IO[bytes]) -> Members | None:
    """Every member of a plain ustar archive (regular files and directories), or None if it is not one.

    Mirrors `tarfile.TarInfo.frombuf` for the headers it accepts (same checksum, name, prefix and
    directory rules), so both paths give the same members; payload is skipped, never read. The
    loop only follows sizes from header to header; the other fields of all headers are checked
    and parsed together.
    """
    chain = _header_chain(_blocks(fileobj))
    if chain is None:
        return None
    blocks, starts, sizes = chain
    raw = np.frombuffer(b"".join(blocks), dtype=np.uint8).reshape(len(blocks), tarfile.BLOCKSIZE)
    kind = raw[:, 156]
    plain = (kind == _REGTYPE) | (kind == _AREGTYPE) | (kind == _DIRTYPE)
    if not (plain.all() and (raw[:, 257:262] == _MAGIC).all() and _checksums_ok(raw)):
        return None
    names = _strings(raw[:, :100])
    if names is None:
        return None  # not UTF-8: tarfile's surrogate escapes
    size = np.asarray(sizes, dtype=np.int64)
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
    return Members(names, is_dir, np.asarray(starts, dtype=np.int64) + tarfile.BLOCKSIZE, size)


def _header_chain(data: mmap.mmap | _Window) -> tuple[list[bytes], list[int], list[int]] | None:
    """Header blocks, their positions and member sizes up to the end-of-archive block; None on anything odd.

    The hot loop of the scan: one pass per member, the common size field parsed inline.
    """
    blocks: list[bytes] = []
    starts: list[int] = []
    sizes: list[int] = []
    pos = 0
    while True:
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


def _blocks(fileobj: IO[bytes]) -> mmap.mmap | _Window:
    """The file's bytes by slice. A local file is mapped: a header costs a page fault, not a read call,
    and the payload between headers is never touched. Other files are read a window at a time."""
    try:
        return mmap.mmap(fileobj.fileno(), 0, access=mmap.ACCESS_READ)
    except (AttributeError, OSError, ValueError):  # no file descriptor, an empty or special file
        return _Window(fileobj)


class _Window:
    """Slices of a file that cannot be mapped (object storage, memory), read `HEADER_WINDOW` at a time:
    the headers of a run of small members come in one request."""

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
