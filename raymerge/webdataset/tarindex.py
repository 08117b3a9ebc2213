"""Tar headers to a sample table: key, member extensions, data offsets and sizes. Payload is never read.

Keys follow WebDataset/Energon: the member path up to the first dot of its last component
(`a/b.seg.png` -> key `a/b`, extension `seg.png`). A sample is a run of adjacent members with one key.
A shard's names are split and checked all at once (Arrow compute); only rare names (a dot in a
folder name, newlines, `..`, `__`) take the regular expressions one by one.
"""

from __future__ import annotations

import mmap
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymerge.errors import InvalidInput

# Energon 7.4's own patterns (megatron/energon/flavors/webdataset/config.py), so keys match exactly.
_SAMPLE_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_META_NAME = re.compile(r"__[^/]*__($|/)")

# Per sample: key, member count, payload bytes; per member (flat, in tar order): extension, data offset, size.
# Keys and extensions are Arrow string arrays, the numbers int64 numpy arrays.
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


@dataclass(frozen=True)
class Members:
    """Every member in tar order, as columns: name, is a directory, data offset, data size."""

    names: pa.LargeStringArray
    is_dir: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray


def scan_tar(fileobj: IO[bytes], shard: str, *, compressed: bool = False, size: int | None = None) -> dict[str, Any]:
    """The sample table of one shard, checked: adjacent keys, keyed members, safe names, complete data.

    Plain ustar headers (what WebDataset writers produce) are found by following the header chain
    and parsed together; anything else (PAX or GNU long names, damage, links) goes through
    `tarfile`, which also words the errors.
    """
    try:
        members = None if compressed else ustar_members(fileobj)
        if members is not None:
            return _table(members, shard, size)
        fileobj.seek(0)
        members, failure = _tarfile_members(fileobj, shard, compressed)
        table = _table(members, shard, size)  # a bad member before the failure is the first error
        if failure is not None:
            raise failure
        return table
    except InvalidInput:
        raise
    except (tarfile.TarError, EOFError, OSError) as e:
        raise InvalidInput(f"{shard}: not a readable tar file ({type(e).__name__}: {e})") from None


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


_ZERO_BLOCK = bytes(tarfile.BLOCKSIZE)
HEADER_WINDOW = 4096  # one page per read where the file cannot be mapped: small members' headers come together
_REGTYPE, _AREGTYPE, _DIRTYPE = tarfile.REGTYPE[0], tarfile.AREGTYPE[0], tarfile.DIRTYPE[0]
_MAGIC = np.frombuffer(b"ustar", dtype=np.uint8)


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


def _tarfile_members(fileobj: IO[bytes], shard: str, compressed: bool) -> tuple[Members, Exception | None]:
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


class _Bytes:
    """The UTF-8 bytes of many names in one buffer, to find a character in all of them at once."""

    def __init__(self, names: pa.LargeStringArray) -> None:
        self.n = len(names)
        self.bounds = np.frombuffer(names.buffers()[1], dtype=np.int64)[names.offset : names.offset + self.n + 1]
        data = names.buffers()[2]
        self.data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8)

    def hits(self, byte: bytes) -> np.ndarray:
        """Positions (in the buffer) of the byte inside any name."""
        start = int(self.bounds[0]) if self.n else 0
        return np.flatnonzero(self.data[start : int(self.bounds[-1]) if self.n else 0] == byte[0]) + start

    def rows(self, positions: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.bounds, positions, side="right") - 1

    def first(self, byte: bytes) -> np.ndarray:
        """Position of the byte's first occurrence in each name, or -1."""
        return self._pick(self.hits(byte), lambda r: np.r_[True, r[1:] != r[:-1]])

    def last(self, byte: bytes) -> np.ndarray:
        return self._pick(self.hits(byte), lambda r: np.r_[r[1:] != r[:-1], True])

    def with_pair(self, byte: bytes) -> np.ndarray:
        """Names that hold the byte twice in a row (`..`, `__`)."""
        pos = self.hits(byte)
        pairs = pos[:-1][(pos[1:] == pos[:-1] + 1)]
        pairs = pairs[self.rows(pairs) == self.rows(pairs + 1)]
        out = np.zeros(self.n, dtype=bool)
        out[self.rows(pairs)] = True
        return out

    def _pick(self, pos: np.ndarray, ends: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        out = np.full(self.n, -1, dtype=np.int64)
        if len(pos):
            rows = self.rows(pos)
            chosen = ends(rows)
            out[rows[chosen]] = pos[chosen]
        return out


def split_names(names: pa.LargeStringArray) -> tuple[pa.LargeStringArray, pa.LargeStringArray]:
    """Keys and extensions of member names (null where a name carries no key), as `split_name` gives them.

    The common name (its first dot in the last component, with text before it, no newline) splits
    at that dot, which is what Energon's expression picks; other names with a dot go through the
    expression itself, one by one.
    """
    b = _Bytes(names)
    dot, slash = b.first(b"."), b.last(b"/")
    newline = np.zeros(len(names), dtype=bool)
    newline[b.rows(b.hits(b"\n"))] = True
    plain = (dot - 1 > np.maximum(slash, b.bounds[:-1] - 1)) & ~newline
    parts = pc.split_pattern(names, ".", max_splits=1)
    first = parts.offsets.to_numpy()[:-1]
    values = parts.flatten()
    keys = values.take(pa.array(first, mask=~plain))
    exts = values.take(pa.array(first + 1, mask=~plain))
    odd = np.flatnonzero(((dot >= 0) | newline) & ~plain)
    if not len(odd):
        return keys, exts
    key_list, ext_list = keys.to_pylist(), exts.to_pylist()
    for i, name in zip(odd.tolist(), names.take(odd).to_pylist(), strict=True):
        key_list[i], ext_list[i] = split_name(name) or (None, None)
    return pa.array(key_list, pa.large_string()), pa.array(ext_list, pa.large_string())


def _name_flags(names: pa.LargeStringArray) -> dict[str, np.ndarray]:
    """Per member: absolute name, `..` component, meta member; the regular expressions only for names
    that contain `..` or `__` at all."""
    b = _Bytes(names)
    flags = {"absolute": b.first(b"/") == b.bounds[:-1]}
    for flag, pair, check in (("traversal", b".", lambda s: unsafe_name(s) is not None), ("meta", b"_", is_meta)):
        found = b.with_pair(pair)
        rows = np.flatnonzero(found)
        found[rows] = [check(name) for name in names.take(rows).to_pylist()]
        flags[flag] = found
    return flags


def _table(members: Members, shard: str, size: int | None) -> dict[str, Any]:
    """Members to samples, with every check of the whole shard done at once; the first bad member is named.

    Directories and meta members (`__...__`) are skipped; the rest must carry a key, lie inside
    the file, and form runs of one key each (no key again later, no extension twice in a run).
    """
    flags = _name_flags(members.names)
    kept = np.flatnonzero(~(members.is_dir | flags["meta"]))
    keys, exts = split_names(members.names.take(kept))
    offsets, sizes = members.offsets[kept], members.sizes[kept]
    key_code = _codes(keys)
    first = np.r_[True, key_code[1:] != key_code[:-1]] if len(kept) else np.zeros(0, dtype=bool)
    starts = np.flatnonzero(first)
    again = np.zeros(len(kept), dtype=bool)  # codes count up by one per new key; a key seen before breaks the count
    again[starts] = key_code[starts] != np.arange(len(starts))
    checks = {
        "absolute": flags["absolute"],
        "traversal": flags["traversal"],
        "no_key": key_code < 0,
        "truncated": offsets + sizes > size if size is not None else np.zeros(len(kept), dtype=bool),
        "again": again,
        "twice": ~_first_occurrences((np.cumsum(first) - 1) * (len(kept) + 1) + _codes(exts)),  # (sample, ext)
    }
    if any(c.any() for c in checks.values()):
        _raise_first(checks, members.names, keys, exts, kept, shard)
    return {
        "key": keys.take(starts),
        "members": np.diff(np.append(starts, len(kept))),
        "nbytes": np.add.reduceat(sizes, starts) if len(starts) else np.zeros(0, dtype=np.int64),
        "exts": exts,
        "offsets": offsets,
        "sizes": sizes,
    }


def _codes(strings: pa.Array) -> np.ndarray:
    """Equal strings get equal numbers (in order of first appearance); null gets -1."""
    return pc.fill_null(pc.dictionary_encode(strings).indices, -1).to_numpy().astype(np.int64)


def _first_occurrences(values: np.ndarray) -> np.ndarray:
    out = np.zeros(len(values), dtype=bool)
    out[np.unique(values, return_index=True)[1]] = True
    return out


def _raise_first(
    checks: dict[str, np.ndarray],
    names: pa.Array,
    keys: pa.Array,
    exts: pa.Array,
    kept: np.ndarray,
    shard: str,
) -> None:
    """The error of the first member with a problem (the checks in `checks` order at that member).

    The name checks cover all members; the others only the kept ones (`kept` says which those are).
    """
    at_member = {p: f if len(f) == len(names) else _spread(kept, f, len(names)) for p, f in checks.items()}
    i = int(np.logical_or.reduce(list(at_member.values())).argmax())
    k = int(np.searchsorted(kept, i))  # its place among kept members, if kept
    name = names[i].as_py()
    messages = {
        "absolute": lambda: f"member {name!r} has an absolute name",
        "traversal": lambda: f"member {name!r} has a name with '..' (path traversal)",
        "no_key": lambda: f"member {name!r} has no key (expected a name like KEY.EXT)",
        "truncated": lambda: f"truncated; member {name!r} ends past the end of the file",
        "again": lambda: (
            f"sample key {keys[k].as_py()!r} appears again after other samples; "
            "the members of a sample must be adjacent"
        ),
        "twice": lambda: f"sample key {keys[k].as_py()!r} has member {exts[k].as_py()!r} twice",
    }
    problem = next(p for p, f in at_member.items() if f[i])
    raise InvalidInput(f"{shard}: {messages[problem]()}")


def _spread(kept: np.ndarray, flags: np.ndarray, n: int) -> np.ndarray:
    """Flags of the kept members, placed among all members."""
    out = np.zeros(n, dtype=bool)
    out[kept] = flags
    return out


def samples(table: dict[str, Any]) -> Iterator[tuple[str, list[str], list[int], list[int]]]:
    """Per sample: key, member extensions, data offsets, sizes."""
    exts, offsets, sizes = table["exts"].to_pylist(), table["offsets"].tolist(), table["sizes"].tolist()
    start = 0
    for key, n in zip(table["key"].to_pylist(), table["members"].tolist(), strict=True):
        end = start + n
        yield key, exts[start:end], offsets[start:end], sizes[start:end]
        start = end


def summarize(table: dict[str, Any], examples: int = 5) -> dict[str, Any]:
    """Counts a driver may hold: samples, payload bytes, how often each extension occurs, first keys."""
    counts = pc.value_counts(table["exts"])  # in order of first appearance
    return {
        "samples": len(table["key"]),
        "bytes": int(table["nbytes"].sum()),
        "extensions": dict(zip(counts.field(0).to_pylist(), counts.field(1).to_pylist(), strict=True)),
        "first_keys": table["key"][:examples].to_pylist(),
    }
