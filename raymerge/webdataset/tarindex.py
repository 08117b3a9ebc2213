"""Tar members to a checked sample table: key, member extensions, data offsets and sizes. Payload is never read.

Keys follow WebDataset/Energon: the member path up to the first dot of its last component
(`a/b.seg.png` -> key `a/b`, extension `seg.png`). A sample is a run of adjacent members with one key.
A shard's names are split and checked in one compiled pass over their bytes (`_marks`, `_cut`), its
keys and samples then checked all at once (Arrow compute); only rare names (a dot in a folder name,
newlines, `..`, `__`) take the regular expressions one by one.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable, Iterator
from typing import IO, Any

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymerge.errors import InvalidInput
from raymerge.webdataset import inline
from raymerge.webdataset.tarmembers import HeaderSource, Members, tarfile_members, ustar_members

# Energon 7.4's own patterns (megatron/energon/flavors/webdataset/config.py), so keys match exactly.
_SAMPLE_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_META_NAME = re.compile(r"__[^/]*__($|/)")


def split_name(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member name, or None when the name carries no key."""
    m = _SAMPLE_NAME.match(name)
    return (m.group(1), m.group(2)) if m else None


def is_meta(name: str) -> bool:
    """Energon skips `__...__` members (e.g. `__key__`): they belong to no sample."""
    return "__" in name and _META_NAME.search(name) is not None


def unsafe_name(name: str) -> str | None:
    """Why a member name must not be copied into a dataset (names escaping the folder)."""
    if name.startswith("/"):
        return "has an absolute name"
    if ".." in name and ".." in name.split("/"):
        return "has a name with '..' (path traversal)"
    return None


def is_run_start(values: np.ndarray) -> np.ndarray:
    """True where a run of equal neighbours begins (the first of each run)."""
    return np.r_[True, values[1:] != values[:-1]] if len(values) else np.zeros(0, dtype=bool)


def scan_tar(
    fileobj: IO[bytes] | HeaderSource | np.ndarray,
    shard: str,
    *,
    compressed: bool = False,
    size: int | None = None,
    carry: int = 0,
) -> dict[str, Any]:
    """The sample table of one shard, checked: adjacent keys, keyed members, safe names, complete data.

    Per sample `key`, `members` (count) and `nbytes` (payload); per member, flat in tar order, `exts`,
    `offsets` (of the data) and `sizes`. Keys and extensions are Arrow string arrays, numbers int64 numpy arrays.
    Plain ustar headers (what WebDataset writers produce) are found by following the header chain
    and parsed together; anything else (PAX or GNU long names, damage, links) goes through
    `tarfile`, which also words the errors. With `carry`, a mapped shard's tiny members come with their
    payload (`data`, `inline.copied_payloads`) where the scan could copy them all within that budget.
    """
    try:
        members = None if compressed else ustar_members(fileobj, (inline.MEMBER_MAX, carry) if carry else (-1, 0))
        if members is not None:
            return table(members, shard, size)
        if isinstance(fileobj, HeaderSource | np.ndarray):  # read by range or mapped: tarfile needs a file
            raise NotPlainUstar(shard)
        fileobj.seek(0)
        members, failure = tarfile_members(fileobj, shard, compressed)
        found = table(members, shard, size)  # a bad member before the failure is the first error
        if failure is not None:
            raise failure
        return found
    except InvalidInput:
        raise
    except (tarfile.TarError, EOFError, OSError) as e:
        raise InvalidInput(f"{shard}: not a readable tar file ({type(e).__name__}: {e})") from None


class NotPlainUstar(Exception):
    """A shard read by range or given mapped holds more than plain ustar headers (PAX or GNU long names,
    links, damage): `tarfile` must read it as a file."""


_ABSOLUTE, _DOTS, _UNDERSCORES, _ODD = 1, 2, 4, 8  # `_marks`: starts with "/", holds "..", "__", needs the expression


def _buffers(names: pa.LargeStringArray) -> tuple[np.ndarray, np.ndarray]:
    """The bounds (n + 1, into the data) and UTF-8 bytes of many names, as numpy views of their buffers."""
    bounds = np.frombuffer(names.buffers()[1], dtype=np.int64)[names.offset : names.offset + len(names) + 1]
    data = names.buffers()[2]
    return bounds, np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8)


@numba.njit(cache=True, nogil=True)
def _marks(bounds: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per name: the length of its key where it splits the common way (its first dot lies in its last
    component, with text before it, and it has no newline: where Energon's expression splits it too), else
    -1; and its marks (`_ABSOLUTE`, `_DOTS`, `_UNDERSCORES`, `_ODD`: a dot or newline, not the common
    way). Compiled: one pass over every name's bytes, tens of thousands of names per shard."""
    n = len(bounds) - 1
    key_lengths = np.full(n, -1, dtype=np.int64)
    marks = np.zeros(n, dtype=np.uint8)
    for i in range(n):
        start, end = bounds[i], bounds[i + 1]
        dot, slash, newline, mark, previous = -1, -1, False, 0, 0
        for j in range(start, end):
            c = data[j]
            if c == 46:  # "."
                dot = j if dot < 0 else dot
                mark |= _DOTS if previous == 46 else 0
            elif c == 47:  # "/"
                slash = j
                mark |= _ABSOLUTE if j == start else 0
            elif c == 95:  # "_"
                mark |= _UNDERSCORES if previous == 95 else 0
            elif c == 10:
                newline = True
            previous = c
        if dot > slash + 1 and dot > start and not newline:
            key_lengths[i] = dot - start
        elif dot >= 0 or newline:
            mark |= _ODD
        marks[i] = mark
    return key_lengths, marks


@numba.njit(cache=True, nogil=True)
def _cut(
    bounds: np.ndarray, data: np.ndarray, rows: np.ndarray, key_lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bounds and bytes of the keys and of the extensions of names `rows` (empty where `key_lengths` is -1).
    Compiled: a short copy per name, where Arrow would split every name into a list first."""
    key_bounds = np.zeros(len(rows) + 1, dtype=np.int64)
    ext_bounds = np.zeros(len(rows) + 1, dtype=np.int64)
    for i in range(len(rows)):
        r = rows[i]
        key = key_lengths[r]
        key_bounds[i + 1] = key_bounds[i] + max(key, 0)
        ext_bounds[i + 1] = ext_bounds[i] + (bounds[r + 1] - bounds[r] - key - 1 if key >= 0 else 0)
    key_bytes = np.empty(key_bounds[-1], dtype=np.uint8)
    ext_bytes = np.empty(ext_bounds[-1], dtype=np.uint8)
    for i in range(len(rows)):
        r = rows[i]
        if key_lengths[r] >= 0:
            start = bounds[r]
            for j in range(key_bounds[i + 1] - key_bounds[i]):
                key_bytes[key_bounds[i] + j] = data[start + j]
            start += key_lengths[r] + 1
            for j in range(ext_bounds[i + 1] - ext_bounds[i]):
                ext_bytes[ext_bounds[i] + j] = data[start + j]
    return key_bounds, key_bytes, ext_bounds, ext_bytes


def split_names(names: pa.LargeStringArray) -> tuple[pa.LargeStringArray, pa.LargeStringArray]:
    """Keys and extensions of member names (null where a name carries no key), as `split_name` gives them."""
    bounds, data = _buffers(names)
    key_lengths, marks = _marks(bounds, data)
    return _split(names, bounds, data, key_lengths, marks, np.arange(len(names), dtype=np.int64))


def _split(
    names: pa.LargeStringArray,
    bounds: np.ndarray,
    data: np.ndarray,
    key_lengths: np.ndarray,
    marks: np.ndarray,
    rows: np.ndarray,
) -> tuple[pa.LargeStringArray, pa.LargeStringArray]:
    """Keys and extensions of names `rows` (`_marks` of all names given). The common name splits at its
    first dot, which is what Energon's expression picks; other names with a dot or newline go through
    the expression itself, one by one."""
    key_bounds, key_bytes, ext_bounds, ext_bytes = _cut(bounds, data, rows, key_lengths)
    valid = pa.py_buffer(np.packbits(key_lengths[rows] >= 0, bitorder="little"))
    key_array = pa.LargeStringArray.from_buffers(len(rows), pa.py_buffer(key_bounds), pa.py_buffer(key_bytes), valid)
    ext_array = pa.LargeStringArray.from_buffers(len(rows), pa.py_buffer(ext_bounds), pa.py_buffer(ext_bytes), valid)
    odd = np.flatnonzero(marks[rows] & _ODD)
    if not len(odd):
        return key_array, ext_array
    key_list, ext_list = key_array.to_pylist(), ext_array.to_pylist()
    for i, name in zip(odd.tolist(), names.take(rows[odd]).to_pylist(), strict=True):
        key_list[i], ext_list[i] = split_name(name) or (None, None)
    return pa.array(key_list, pa.large_string()), pa.array(ext_list, pa.large_string())


def _checked_marks(
    names: pa.LargeStringArray, marks: np.ndarray, mark: int, check: Callable[[str], bool]
) -> np.ndarray:
    """Names with the mark for which `check` holds: the regular expressions only for names that carry it."""
    found = (marks & mark) > 0
    rows = np.flatnonzero(found)
    found[rows] = [check(name) for name in names.take(rows).to_pylist()]
    return found


def table(members: Members, shard: str, size: int | None) -> dict[str, Any]:
    """Members to samples, with every check of the whole shard done at once; the first bad member is named.

    Directories and meta members (`__...__`) are skipped; the rest must carry a key, lie inside
    the file, and form runs of one key each (no key again later, no extension twice in a run).
    """
    bounds, data = _buffers(members.names)
    key_lengths, marks = _marks(bounds, data)
    meta = _checked_marks(members.names, marks, _UNDERSCORES, is_meta)
    kept = np.flatnonzero(~(members.is_dir | meta))
    keys, exts = _split(members.names, bounds, data, key_lengths, marks, kept)
    offsets, sizes = members.offsets[kept], members.sizes[kept]
    key_code = _codes(keys)
    first = is_run_start(key_code)
    starts = np.flatnonzero(first)
    again = np.zeros(len(kept), dtype=bool)  # codes count up by one per new key; a key seen before breaks the count
    again[starts] = key_code[starts] != np.arange(len(starts))
    checks = {
        "absolute": (marks & _ABSOLUTE) > 0,
        "traversal": _checked_marks(members.names, marks, _DOTS, lambda name: unsafe_name(name) is not None),
        "no_key": key_code < 0,
        "truncated": offsets + sizes > size if size is not None else np.zeros(len(kept), dtype=bool),
        "again": again,
        "twice": ~_first_occurrences((np.cumsum(first) - 1) * (len(kept) + 1) + _codes(exts)),  # (sample, ext)
    }
    if any(c.any() for c in checks.values()):
        _raise_first(checks, members.names, keys, exts, kept, shard)
    found = {
        "key": keys.take(starts),
        "members": np.diff(np.append(starts, len(kept))),
        "nbytes": np.add.reduceat(sizes, starts) if len(starts) else np.zeros(0, dtype=np.int64),
        "exts": exts,
        "offsets": offsets,
        "sizes": sizes,
    }
    if members.small is not None:
        dropped = np.ones(len(members.sizes), dtype=bool)
        dropped[kept] = False
        theirs = members.sizes[dropped]
        if not ((theirs > 0) & (theirs <= members.small_max)).any():  # no bytes of a dropped member among them
            found["data"] = inline.copied_payloads(members.small, sizes)
    return found


def _codes(strings: pa.Array) -> np.ndarray:
    """Equal strings get equal numbers (in order of first appearance); null gets -1."""
    return pc.fill_null(pc.dictionary_encode(strings).indices, -1).to_numpy().astype(np.int64)


def _first_occurrences(values: np.ndarray) -> np.ndarray:
    """True at the first position of each distinct value."""
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
