"""Every member of a tar from its headers: name, is a directory, data offset, data size (and, on request, the
payload of its tiny members, copied on the way).

Plain ustar archives (what WebDataset writers produce) are read by following the header chain and
checking each header in compiled code; anything else (PAX or GNU long names, links, damage, gzip)
goes through `tarfile`, which also words the errors. Payload is not read, but for tiny members' when asked.
"""

from __future__ import annotations

import mmap
import tarfile
from dataclasses import dataclass
from typing import IO

import numba
import numpy as np
import pyarrow as pa

from raymerge.errors import InvalidInput

HEADER_WINDOW = 4096  # one page per read where the file cannot be mapped: small members' headers come together
_BLOCK = tarfile.BLOCKSIZE
_ZERO_BLOCK = bytes(_BLOCK)
_NAME_MAX = 155 + 1 + 100  # bytes of a name: prefix field, slash, name field


@dataclass(frozen=True)
class Members:
    """Every member in tar order, as columns: name, is a directory, data offset, data size."""

    names: pa.LargeStringArray
    is_dir: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    small_max: int = -1  # with `small`: the payload of every member of at most this many bytes, in tar order
    small: np.ndarray | None = None


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


def ustar_members(fileobj: IO[bytes] | HeaderSource | np.ndarray, carry: tuple[int, int] = (-1, 0)) -> Members | None:
    """Every member of a plain ustar archive (regular files and directories), or None if it is not one.

    Mirrors `tarfile.TarInfo.frombuf` for the headers it accepts (same checksum, size, name, prefix
    and directory rules), so both paths give the same members; payload is skipped. A local file is
    mapped (or comes mapped, `mapped`) and its header chain followed and checked in compiled code
    (`_chain`: a page fault per header, no read call); other files are followed by `header_chain`, a
    read per header or window, and their headers checked by `_headers`, the same checks. A mapped file
    given `carry` (most bytes of a member, most bytes in all) also gives the payload of its members up
    to that size (`Members.small`), copied as their headers are read, where they fit.
    """
    source = fileobj if isinstance(fileobj, np.ndarray) else _blocks(fileobj)
    small = None
    if isinstance(source, np.ndarray):
        ok, found, text, copied, total = _chain(source, *carry)
        starts, sizes = found[0], found[1]
        small = copied[:total] if total >= 0 else None
    else:
        chain = header_chain(source)
        if chain is None:
            return None
        raw, starts, sizes = chain
        ok, found, text = _headers(raw, np.arange(len(starts), dtype=np.int64) * _BLOCK, sizes)
    names = _names(found[3], text) if ok else None
    return None if names is None else Members(names, found[2].astype(bool), starts + _BLOCK, sizes, carry[0], small)


def mapped(fileobj: IO[bytes]) -> np.ndarray | None:
    """A local file's bytes, mapped read-only, or None for one that cannot be mapped (empty, special, in
    memory). The mapping goes when the last array over it does: a caller that raises while holding it
    loses nothing (closing a mapping that an array still refers to would fail)."""
    try:
        return np.frombuffer(mmap.mmap(fileobj.fileno(), 0, access=mmap.ACCESS_READ), dtype=np.uint8)
    except (AttributeError, OSError, ValueError):
        return None


def header_chain(data: HeaderSource | _Window) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Header blocks (one after the other), their positions and member sizes, up to the end-of-archive
    block, as `_chain` finds them in a mapped file; None on anything odd (a cut or empty archive, a size
    that is not a plain number). For files that are read, not mapped: object storage reads by range."""
    blocks: list[bytes] = []
    starts: list[int] = []
    sizes: list[int] = []
    pos = 0
    while True:
        block = data[pos : pos + _BLOCK]
        if len(block) != _BLOCK or (block == _ZERO_BLOCK and not pos):
            return None
        if block == _ZERO_BLOCK:
            break
        size = _octal(np.frombuffer(block, dtype=np.uint8, offset=124, count=12))
        if size < 0:
            return None
        blocks.append(block)
        starts.append(pos)
        sizes.append(size)
        pos += _BLOCK + ((size + _BLOCK - 1) & -_BLOCK)
    raw = np.frombuffer(b"".join(blocks), dtype=np.uint8)
    return raw, np.asarray(starts, dtype=np.int64), np.asarray(sizes, dtype=np.int64)


def _names(ends: np.ndarray, text: np.ndarray) -> pa.LargeStringArray | None:
    """Names (their ends in `text`, one after the other), or None if one is not UTF-8 (tarfile escapes
    such bytes; keys must be text)."""
    bounds = np.zeros(len(ends) + 1, dtype=np.int64)
    bounds[1:] = ends
    names = pa.LargeStringArray.from_buffers(len(ends), pa.py_buffer(bounds), pa.py_buffer(text))
    try:
        names.validate(full=True)
    except pa.ArrowInvalid:
        return None
    return names


@numba.njit(cache=True, nogil=True)
def _chain(data: np.ndarray, cap: int, most: int) -> tuple[bool, np.ndarray, np.ndarray, np.ndarray, int]:
    """The headers of a mapped tar, followed up to the end-of-archive block as `header_chain` follows them,
    each checked and its name taken as it is reached (`_header`): per header (columns) its position,
    member size, is a directory and where its name ends in the names' bytes (the second array). False
    on anything odd (a cut or empty archive, a size that is not a plain number, a header that is not
    plain ustar). Compiled: one step per member, each header read once, and a shard holds tens of
    thousands of tiny members.

    On the way, the payload of every member of at most `cap` bytes is copied out while its header is
    still in the cache (one after the other, the third array): their bytes in all, or -1 where they
    would come to more than `most` or a member runs past the end (the caller then takes them its own
    way), or where `cap` is negative (none wanted)."""
    found = np.empty((4, 1024), dtype=np.int64)  # grown as needed, like the names' bytes
    text = np.empty(1024 * _NAME_MAX, dtype=np.uint8)
    copied = np.empty(max(0, min(most, len(data))) if cap >= 0 else 0, dtype=np.uint8)
    n, pos, end, ok, total = 0, 0, 0, False, 0 if cap >= 0 else -1
    while pos + _BLOCK <= len(data):
        block = data[pos : pos + _BLOCK]
        zero = True
        for j in range(_BLOCK):
            if block[j]:
                zero = False
                break
        if zero:
            ok = pos > 0
            break
        if n == found.shape[1]:
            more, longer = np.empty((4, 2 * n), dtype=np.int64), np.empty(2 * len(text), dtype=np.uint8)
            more[:, :n], longer[:end] = found, text[:end]
            found, text = more, longer
        size = _octal(block[124:136])
        end, is_dir = _header(block, size, text, end)
        if size < 0 or end < 0:
            break
        if total >= 0 and size <= cap:
            if total + size > len(copied) or pos + _BLOCK + size > len(data):
                total = -1
            else:
                for j in range(size):  # a few dozen bytes: a slice assignment costs more than its copy
                    copied[total + j] = data[pos + _BLOCK + j]
                total += size
        found[0, n], found[1, n], found[2, n], found[3, n] = pos, size, is_dir, end
        n += 1
        pos += _BLOCK + ((size + _BLOCK - 1) & -_BLOCK)
    n = n if ok else 0
    return ok, found[:, :n].copy(), text[: found[3, n - 1] if n else 0].copy(), copied, total


@numba.njit(cache=True, nogil=True)
def _headers(data: np.ndarray, at: np.ndarray, sizes: np.ndarray) -> tuple[bool, np.ndarray, np.ndarray]:
    """`_chain`'s answer for headers whose positions (`at`, in `data`) and sizes are known: those read,
    not mapped (`header_chain`). Compiled as `_chain` is: one implementation of the checks."""
    found = np.empty((4, len(at)), dtype=np.int64)
    text = np.empty(len(at) * _NAME_MAX, dtype=np.uint8)
    end = 0
    for i in range(len(at)):
        end, is_dir = _header(data[at[i] : at[i] + _BLOCK], sizes[i], text, end)
        if end < 0:
            return False, found[:, :0].copy(), text[:0].copy()
        found[0, i], found[1, i], found[2, i], found[3, i] = at[i], sizes[i], is_dir, end
    return True, found, text[:end].copy()


@numba.njit(cache=True, nogil=True, inline="always")  # once per header, in the loops above
def _header(block: np.ndarray, size: int, text: np.ndarray, end: int) -> tuple[int, bool]:
    """Checks a header and writes its name into `text` at `end` (at most `_NAME_MAX` bytes) as
    `tarfile.TarInfo.frombuf` reads it: the prefix field and a slash where there is a prefix, then the
    name field (each up to its first NUL; a directory's without trailing slashes, old-style directories
    known by such a slash). The name's end and whether it is a directory; an end of -1 where the header
    is not plain ustar: the ustar magic, a regular file or a directory (of size 0), tarfile's unsigned
    checksum."""
    total = 8 * 32  # the checksum field counts as spaces
    for j in range(148):
        total += block[j]
    for j in range(156, _BLOCK):
        total += block[j]
    kind = block[156]
    magic = block[257] == 117 and block[258] == 115 and block[259] == 116  # "ust"
    magic = magic and block[260] == 97 and block[261] == 114  # "ar"
    if not (magic and (kind == 48 or kind == 0 or kind == 53) and _octal(block[148:156]) == total):
        return -1, False
    name = _field_length(block[:100])
    is_dir = kind == 53 or (kind == 0 and name > 0 and block[name - 1] == 47)  # 47: "/"
    if is_dir:
        if size:
            return -1, False
        while name > 0 and block[name - 1] == 47:
            name -= 1
    prefix = _field_length(block[345:500])
    for j in range(prefix):  # loops: shorter than slice assignment, which checks for overlap
        text[end + j] = block[345 + j]
    if prefix:
        text[end + prefix] = 47
        end += prefix + 1
    for j in range(name):
        text[end + j] = block[j]
    return end + name, is_dir


@numba.njit(cache=True, nogil=True)
def _field_length(field: np.ndarray) -> int:
    """Bytes of a NUL-terminated field before its first NUL."""
    for j in range(len(field)):
        if field[j] == 0:
            return j
    return len(field)


@numba.njit(cache=True, nogil=True, inline="always")  # the common form costs less than a call
def _octal(field: np.ndarray) -> int:
    """A number field as `tarfile` reads it, or -1 where `_int` says so. Digits up to a NUL, as tarfile
    and most writers write them ("%011o\\0"), are read here; any other form by `_int`. Compiled: every
    header has two, read as the chain is followed."""
    value = 0
    for j in range(len(field)):
        digit = int(field[j]) - 48
        if 0 <= digit <= 7:
            value = value * 8 + digit
        elif field[j] == 0 and j:
            return value
        else:
            return _int(field)
    return value


@numba.njit(cache=True, nogil=True)
def _int(field: np.ndarray) -> int:
    """A number field as `tarfile` reads it (up to its first NUL, ASCII white space stripped, octal as
    Python's `int` takes it: a sign, a `0o` prefix, underscores between digits), or -1 where that
    fails, is negative or the field is base-256 (those headers go to `tarfile`)."""
    if field[0] == 0x80 or field[0] == 0xFF:
        return -1
    start, stop = 0, _field_length(field)
    while start < stop and _is_space(field[start]):
        start += 1
    while stop > start and _is_space(field[stop - 1]):
        stop -= 1
    if start == stop:
        return 0
    negative = field[start] == 45  # "-"
    if negative or field[start] == 43:  # "+"
        start += 1
    if stop - start > 1 and field[start] == 48 and (field[start + 1] == 111 or field[start + 1] == 79):  # "0o"
        start += 2
        if start < stop and field[start] == 95:  # "_" may follow the prefix
            start += 1
    value, digits, underscore = 0, 0, False
    for j in range(start, stop):
        c = field[j]
        if c == 95 and digits and not underscore:
            underscore = True
        elif 48 <= c <= 55:
            value, digits, underscore = value * 8 + c - 48, digits + 1, False
        else:
            return -1
    if underscore or not digits or (negative and value):
        return -1
    return value


@numba.njit(cache=True, nogil=True)
def _is_space(c: int) -> bool:
    """What Python strips from bytes: space, tab, newline, carriage return, vertical tab, form feed."""
    return c == 32 or 9 <= c <= 13


def _blocks(fileobj: IO[bytes] | HeaderSource) -> np.ndarray | HeaderSource | _Window:
    """The file's bytes by slice. A local file is mapped (`mapped`): a header costs a page fault, not a
    read call, and the payload between headers is never touched. A `HeaderSource` (object storage) reads
    its own ranges; other files are read a window at a time."""
    if isinstance(fileobj, HeaderSource):
        return fileobj
    view = mapped(fileobj)
    return _Window(fileobj) if view is None else view


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
