"""Tar members to a checked sample table: key, member extensions, data offsets and sizes. Payload is never read.

Keys follow WebDataset/Energon: the member path up to the first dot of its last component
(`a/b.seg.png` -> key `a/b`, extension `seg.png`). A sample is a run of adjacent members with one key.
A shard's names are split and checked all at once (Arrow compute); only rare names (a dot in a
folder name, newlines, `..`, `__`) take the regular expressions one by one.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable, Iterator
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymerge.errors import InvalidInput
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


def is_run_end(values: np.ndarray) -> np.ndarray:
    """True where a run of equal neighbours ends (the last of each run)."""
    return np.r_[values[1:] != values[:-1], True] if len(values) else np.zeros(0, dtype=bool)


def scan_tar(
    fileobj: IO[bytes] | HeaderSource, shard: str, *, compressed: bool = False, size: int | None = None
) -> dict[str, Any]:
    """The sample table of one shard, checked: adjacent keys, keyed members, safe names, complete data.

    Per sample `key`, `members` (count) and `nbytes` (payload); per member, flat in tar order, `exts`,
    `offsets` (of the data) and `sizes`. Keys and extensions are Arrow string arrays, numbers int64 numpy arrays.
    Plain ustar headers (what WebDataset writers produce) are found by following the header chain
    and parsed together; anything else (PAX or GNU long names, damage, links) goes through
    `tarfile`, which also words the errors.
    """
    try:
        members = None if compressed else ustar_members(fileobj)
        if members is not None:
            return table(members, shard, size)
        if isinstance(fileobj, HeaderSource):  # read by range: what is not plain ustar needs the whole file
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
    """A shard read by range holds more than plain ustar headers (PAX or GNU long names, links, damage):
    `tarfile` must read it as a file."""


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
        """The name each buffer position belongs to."""
        return np.searchsorted(self.bounds, positions, side="right") - 1

    def first(self, byte: bytes) -> np.ndarray:
        """Position of the byte's first occurrence in each name, or -1."""
        return self._pick(self.hits(byte), is_run_start)

    def last(self, byte: bytes) -> np.ndarray:
        """Position of the byte's last occurrence in each name, or -1."""
        return self._pick(self.hits(byte), is_run_end)

    def with_pair(self, byte: bytes) -> np.ndarray:
        """Names that hold the byte twice in a row (`..`, `__`)."""
        pos = self.hits(byte)
        pairs = pos[:-1][(pos[1:] == pos[:-1] + 1)]
        pairs = pairs[self.rows(pairs) == self.rows(pairs + 1)]
        out = np.zeros(self.n, dtype=bool)
        out[self.rows(pairs)] = True
        return out

    def _pick(self, pos: np.ndarray, choose: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """One of each name's hits (`choose` marks it among the hits of one name), or -1 where it has none."""
        out = np.full(self.n, -1, dtype=np.int64)
        if len(pos):
            rows = self.rows(pos)
            chosen = choose(rows)
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


def table(members: Members, shard: str, size: int | None) -> dict[str, Any]:
    """Members to samples, with every check of the whole shard done at once; the first bad member is named.

    Directories and meta members (`__...__`) are skipped; the rest must carry a key, lie inside
    the file, and form runs of one key each (no key again later, no extension twice in a run).
    """
    flags = _name_flags(members.names)
    kept = np.flatnonzero(~(members.is_dir | flags["meta"]))
    keys, exts = split_names(members.names.take(kept))
    offsets, sizes = members.offsets[kept], members.sizes[kept]
    key_code = _codes(keys)
    first = is_run_start(key_code)
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
