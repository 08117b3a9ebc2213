"""Tar headers to a sample table: key, member extensions, data offsets and sizes. Payload is never read.

Keys follow WebDataset/Energon: the member path up to the first dot of its last component
(`a/b.seg.png` -> key `a/b`, extension `seg.png`). A sample is a run of adjacent members with one key.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import numpy as np

from raymerge.errors import InvalidInput

# Energon 7.4's own patterns (megatron/energon/flavors/webdataset/config.py), so keys match exactly.
_SAMPLE_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_META_NAME = re.compile(r"__[^/]*__($|/)")

# Per sample: key, member count, payload bytes; per member (flat, in tar order): extension, data offset, size.
COLUMNS = ("key", "members", "nbytes", "exts", "offsets", "sizes")


def split_name(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member name, or None when the name carries no key."""
    m = _SAMPLE_NAME.match(name)
    return (m.group(1), m.group(2)) if m else None


def is_meta(name: str) -> bool:
    return "__" in name and _META_NAME.search(name) is not None


def unsafe_reason(info: tarfile.TarInfo) -> str | None:
    """Why a member of this type must not be copied into a dataset (links, devices)."""
    if info.issym() or info.islnk():
        return "is a link; only regular files are allowed"
    if not (info.isreg() or info.isdir()):
        return "is a device, fifo or other special file; only regular files are allowed"
    return None


def unsafe_name(name: str) -> str | None:
    """Why a member name must not be copied into a dataset (names escaping the folder)."""
    if name.startswith("/"):
        return "has an absolute name"
    if ".." in name and ".." in name.split("/"):
        return "has a name with '..' (path traversal)"
    return None


def open_tar(fileobj: IO[bytes], compressed: bool) -> tarfile.TarFile:
    return tarfile.open(fileobj=fileobj, mode="r:gz" if compressed else "r:")


# One member as the scan sees it: name, is a directory, data offset, data size.
Member = tuple[str, bool, int, int]


def scan_tar(fileobj: IO[bytes], shard: str, *, compressed: bool = False, size: int | None = None) -> dict[str, list]:
    """The sample table of one shard, checked: adjacent keys, keyed members, safe names, complete data.

    Plain ustar headers (what WebDataset writers produce) are parsed directly, one 512-byte read per
    member; anything else (PAX or GNU long names, damage, links) goes through `tarfile`, which also
    words the errors.
    """
    try:
        members = None if compressed else ustar_members(fileobj)
        if members is None:
            fileobj.seek(0)
            return _table(_tarfile_members(fileobj, shard, compressed), shard, size)
        return _table(members, shard, size)
    except InvalidInput:
        raise
    except (tarfile.TarError, EOFError, OSError) as e:
        raise InvalidInput(f"{shard}: not a readable tar file ({type(e).__name__}: {e})") from None


def ustar_members(fileobj: IO[bytes]) -> list[Member] | None:
    """Every member of a plain ustar archive (regular files and directories), or None if it is not one.

    Mirrors `tarfile.TarInfo.frombuf` for the headers it accepts (same checksum, name, prefix and
    directory rules), so both paths give the same table; payload is skipped, never read. The
    checksums of all headers are verified together at the end.
    """
    read_at = _reader(fileobj)
    out: list[Member] = []
    blocks: list[bytes] = []
    pos = window_start = 0
    window = b""
    while True:
        if pos - window_start + tarfile.BLOCKSIZE <= len(window):  # small members: the next header is read already
            block = window[pos - window_start : pos - window_start + tarfile.BLOCKSIZE]
        else:
            window, window_start = read_at(pos, HEADER_WINDOW), pos
            block = window[: tarfile.BLOCKSIZE]
        if len(block) != tarfile.BLOCKSIZE:
            return None
        if block == _ZERO_BLOCK:
            return out if pos and _checksums_ok(blocks) else None
        kind = block[156:157]
        if kind not in _PLAIN_TYPES or block[257:262] != b"ustar":
            return None
        try:
            # the common "%011o" + NUL or space; anything else the general way
            size = int(block[124:135], 8) if block[135] in (0, 32) else _octal(block[124:136])
        except ValueError:
            try:
                size = _octal(block[124:136])
            except ValueError:
                return None
        end = block.find(0, 0, 100)
        name = block[: end if end >= 0 else 100].decode("utf-8", "surrogateescape")
        is_dir = kind == tarfile.DIRTYPE or (kind == tarfile.AREGTYPE and name.endswith("/"))
        if is_dir:
            if size:
                return None
            name = name.rstrip("/")
        if block[345]:
            name = _nts(block[345:500]) + "/" + name
        blocks.append(block)
        out.append((name, is_dir, pos + tarfile.BLOCKSIZE, size))
        pos += tarfile.BLOCKSIZE + (0 if is_dir else -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE)


_ZERO_BLOCK = bytes(tarfile.BLOCKSIZE)
HEADER_WINDOW = 4096  # one page per read: a run of small members' headers comes in one call
_PLAIN_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE)


def _checksums_ok(blocks: list[bytes]) -> bool:
    """tarfile's (unsigned) header checksum: the byte sum with the checksum field counted as spaces."""
    if not blocks:
        return True
    try:
        stored = np.array([_octal(b[148:156]) for b in blocks], dtype=np.int64)  # "%06o\0 " mostly
    except ValueError:
        return False
    raw = np.frombuffer(b"".join(blocks), dtype=np.uint8).reshape(len(blocks), tarfile.BLOCKSIZE)
    sums = raw.sum(axis=1, dtype=np.int64) - raw[:, 148:156].sum(axis=1, dtype=np.int64) + 8 * 32
    return bool(np.array_equal(sums, stored))


def _octal(field: bytes) -> int:
    if field[:1] in (b"\x80", b"\xff"):
        raise ValueError("base-256 number")
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _nts(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _reader(fileobj: IO[bytes]) -> Callable[[int, int], bytes]:
    """Positional reads: `pread` on a real file (one system call per read), seek + read otherwise."""
    try:
        fd = fileobj.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd is not None:
        return lambda pos, n: os.pread(fd, n, pos)

    def read_at(pos: int, n: int) -> bytes:
        fileobj.seek(pos)
        return fileobj.read(n)

    return read_at


def _tarfile_members(fileobj: IO[bytes], shard: str, compressed: bool) -> Iterator[Member]:
    with open_tar(fileobj, compressed) as tar:
        for info in tar:
            reason = unsafe_reason(info)
            if reason:
                raise InvalidInput(f"{shard}: member {info.name!r} {reason}")
            yield info.name, info.isdir(), info.offset_data, info.size
        _check_end_marker(tar, shard)


def _table(members: Iterable[Member], shard: str, size: int | None) -> dict[str, list]:
    table: dict[str, list] = {c: [] for c in COLUMNS}
    keys, counts, nbytes = table["key"], table["members"], table["nbytes"]
    exts, offsets, sizes = table["exts"], table["offsets"], table["sizes"]
    seen: set[str] = set()
    last: str | None = None
    sample_exts: list[str] = []
    for name, is_dir, offset, length in members:
        reason = unsafe_name(name)
        if reason:
            raise InvalidInput(f"{shard}: member {name!r} {reason}")
        if is_dir or is_meta(name):
            continue
        parts = split_name(name)
        if parts is None:
            raise InvalidInput(f"{shard}: member {name!r} has no key (expected a name like KEY.EXT)")
        key, ext = parts
        if size is not None and offset + length > size:
            raise InvalidInput(f"{shard}: truncated; member {name!r} ends past the end of the file")
        if key != last:
            if key in seen:
                raise InvalidInput(
                    f"{shard}: sample key {key!r} appears again after other samples; "
                    "the members of a sample must be adjacent"
                )
            seen.add(key)
            last = key
            keys.append(key)
            counts.append(0)
            nbytes.append(0)
            sample_exts = []
        elif ext in sample_exts:
            raise InvalidInput(f"{shard}: sample key {key!r} has member {ext!r} twice")
        sample_exts.append(ext)
        exts.append(ext)
        offsets.append(offset)
        sizes.append(length)
        counts[-1] += 1
        nbytes[-1] += length
    return table


def samples(table: dict[str, list]) -> Iterator[tuple[str, list[str], list[int], list[int]]]:
    """Per sample: key, member extensions, data offsets, sizes."""
    start = 0
    for key, n in zip(table["key"], table["members"], strict=True):
        end = start + n
        yield key, table["exts"][start:end], table["offsets"][start:end], table["sizes"][start:end]
        start = end


def _check_end_marker(tar: tarfile.TarFile, shard: str) -> None:
    """tarfile stops quietly at a cut or damaged header; a complete tar ends with a zero block there."""
    tar.fileobj.seek(tar.offset)
    if tar.fileobj.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
        raise InvalidInput(f"{shard}: truncated or damaged at byte {tar.offset} (no end-of-archive marker there)")


def summarize(table: dict[str, Any], examples: int = 5) -> dict[str, Any]:
    """Counts a driver may hold: samples, payload bytes, how often each extension occurs, first keys."""
    ext_counts = dict(Counter(table["exts"]))
    return {
        "samples": len(table["key"]),
        "bytes": int(sum(table["nbytes"])),
        "extensions": ext_counts,
        "first_keys": list(table["key"][:examples]),
    }
