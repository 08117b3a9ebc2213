"""An input's own member index, used instead of scanning its tar headers: Energon's `.nv-meta/index.sqlite`
(what `energon prepare` and raymerge's own outputs carry), with `.nv-meta/.info.json` for shard ids.

Used for folders on object storage, where a scan costs a ranged read per run of small members; a local
shard's headers are mapped, which costs less than reading the index's rows. An index is only
trusted as far as it is checked, and a shard whose check fails is scanned instead, the reason given
in the report (`input_indexes`), rather than refusing the run: a scan is always right.

- On the driver, from the listing and two small reads: the shard is named in `.info.json`; its
  `.tar.idx`, if listed, has one entry per sample counted there plus one; a raymerge `raymerge.json`
  beside the index gives the same total of tar bytes as the listing.
- In the scan task, per shard: the index's members pass the same checks as scanned ones, their count
  matches `.info.json`, the last member ends inside the tar, and one ranged read at the end of the tar
  finds the last member's header (its size, its name) and the end-of-archive block where the index
  puts them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tarfile
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.errors import InvalidInput
from raymerge.webdataset.tarmembers import Members

if TYPE_CHECKING:
    from raymerge.webdataset.sources import Shard

META = ".nv-meta"
IDX_SUFFIX = ".idx"
_CACHE: dict[tuple[str, int], str] = {}  # (index url, size) -> a local copy, kept for this process's scans
_TMP: list[tempfile.TemporaryDirectory] = []
_BLOCK = tarfile.BLOCKSIZE


@dataclass(frozen=True)
class IndexRef:
    """Where an input's index is, and what the listing said about it."""

    path: str  # .nv-meta/index.sqlite
    size: int
    info: str  # .nv-meta/.info.json
    manifest: str | None  # raymerge.json beside it
    idx_sizes: dict[str, int] = field(default_factory=dict)  # shard name -> size of its .tar.idx


@dataclass(frozen=True)
class ShardIndex:
    """What a scan task needs to read one shard from the index."""

    index: IndexRef
    tar_id: int
    samples: int


def find(root: str, found: dict[str, dict[str, Any]]) -> IndexRef | None:
    """The input folder's index, from its listing (no request of its own), or None."""
    sqlite_path, info = storage.join(root, META, "index.sqlite"), storage.join(root, META, ".info.json")
    if sqlite_path not in found or info not in found:
        return None
    manifest = storage.join(root, storage.MANIFEST)
    idx = {
        p[len(root) + 1 : -len(IDX_SUFFIX)]: int(i.get("size") or 0)
        for p, i in found.items()
        if p.endswith(".tar" + IDX_SUFFIX)
    }
    return IndexRef(
        sqlite_path, int(found[sqlite_path].get("size") or 0), info, manifest if manifest in found else None, idx
    )


def plan_input(
    fs: AbstractFileSystem, ref: IndexRef, shards: list[tuple[int, Shard]]
) -> tuple[dict[int, ShardIndex], list[str]]:
    """The input's shards (global id, shard) that may be read from the index, and why not the others."""
    try:
        counts: dict[str, int] = json.loads(fs.cat_file(ref.info))["shard_counts"]
        manifest = json.loads(fs.cat_file(ref.manifest)) if ref.manifest else None
    except (OSError, ValueError, KeyError, TypeError) as e:
        return {}, [f"{META}/.info.json unreadable ({e})"]
    if manifest is not None:
        why = _manifest_mismatch(manifest.get("report", {}), counts, [s for _, s in shards])
        if why:
            return {}, [f"raymerge.json {why} (the folder changed since it was written)"]
    ids = {name: i for i, name in enumerate(counts)}
    usable: dict[int, ShardIndex] = {}
    problems: list[str] = []
    for gid, shard in shards:
        if shard.compressed or shard.name not in ids:
            problems.append(f"{shard.name} is not in {META}/.info.json")
            continue
        idx_size = ref.idx_sizes.get(shard.name)
        if idx_size is not None and idx_size != 8 * (counts[shard.name] + 1):
            problems.append(f"{shard.name}{IDX_SUFFIX} does not have {counts[shard.name]} samples")
            continue
        usable[gid] = ShardIndex(ref, ids[shard.name], int(counts[shard.name]))
    return usable, problems


def _manifest_mismatch(report: dict[str, Any], counts: dict[str, int], shards: list[Shard]) -> str | None:
    """How a raymerge output's manifest disagrees with its index and the listing, or None."""
    written = {f for f in report.get("files_written", []) if f.endswith(".tar")}
    listed = {s.name for s in shards}
    if written and written != listed:
        return f"names {len(written)} tars, the listing {len(listed)}"
    if report.get("rows_out") is not None and report["rows_out"] != sum(counts.values()):
        return f"counts {report['rows_out']} samples, {META}/.info.json {sum(counts.values())}"
    ends = report.get("details", {}).get("tar_bytes")  # the end of each tar's last member, summed
    trailer = sum(s.size for s in shards) - (ends or 0)
    if ends is not None and not 2 * _BLOCK * len(shards) <= trailer < (2 * _BLOCK + tarfile.RECORDSIZE) * len(shards):
        return f"says the tars' members end at {ends} bytes in all, which their sizes do not allow"
    return None


def describe(used: int, problems: list[str]) -> str:
    """The report's line for one input."""
    said = f"{META}/index.sqlite used for {used} shard(s)" if used else f"{META}/index.sqlite not used"
    if problems:
        said += "; headers scanned instead: " + "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")
    return said


def members(fs: AbstractFileSystem, shard: Shard, where: ShardIndex) -> tuple[Members | None, str | None]:
    """The shard's members as its index has them, checked against the tar; (None, why) when they do not fit."""
    with contextlib.closing(_open(fs, where.index)) as db:
        return _members(db, fs, shard, where)


def _members(
    db: sqlite3.Connection, fs: AbstractFileSystem, shard: Shard, where: ShardIndex
) -> tuple[Members | None, str | None]:
    rows = db.execute(
        "SELECT s.sample_key || '.' || p.part_name, p.content_byte_offset, p.content_byte_size "
        "FROM sample_parts p JOIN samples s ON s.tar_file_id = p.tar_file_id AND s.sample_index = p.sample_index "
        "WHERE p.tar_file_id = ? ORDER BY p.sample_index, p.content_byte_offset",
        (where.tar_id,),
    ).fetchall()
    samples = db.execute("SELECT COUNT(*) FROM samples WHERE tar_file_id = ?", (where.tar_id,)).fetchone()[0]
    if samples != where.samples or not rows:
        return None, f"{shard.name}: the index has {samples} samples, .info.json {where.samples}"
    names, offsets, sizes = zip(*rows, strict=True)
    off, size = np.array(offsets, dtype=np.int64), np.array(sizes, dtype=np.int64)
    end = int(off[-1] + size[-1])
    tail = end + (-end % _BLOCK)
    if tail + 2 * _BLOCK > shard.size:
        return None, f"{shard.name}: the index ends at byte {tail}, past the tar's {shard.size} bytes"
    why = _check_tail(fs, shard, names[-1], int(off[-1]), int(size[-1]), tail)
    if why:
        return None, f"{shard.name}: {why}"
    found = Members(pa.array(names, pa.large_string()), np.zeros(len(names), dtype=bool), off, size)
    return found, None


def _check_tail(fs: AbstractFileSystem, shard: Shard, name: str, offset: int, size: int, tail: int) -> str | None:
    """One ranged read (two when the last member is large): the last member's header and the end-of-archive
    block, where the index says they are."""
    header_at = offset - _BLOCK
    if tail + 2 * _BLOCK - header_at <= 64 * 1024:
        data = fs.cat_file(shard.path, start=header_at, end=tail + 2 * _BLOCK)
        header, end_block = data[:_BLOCK], data[tail - header_at :]
    else:
        header = fs.cat_file(shard.path, start=header_at, end=offset)
        end_block = fs.cat_file(shard.path, start=tail, end=tail + 2 * _BLOCK)
    if end_block != bytes(2 * _BLOCK):
        return f"no end-of-archive block at byte {tail}, where the index ends"
    try:
        info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
    except tarfile.TarError:
        return f"no tar header at byte {header_at}, where the index puts its last member"
    if info.size != size or not (name.endswith(info.name) or info.name.endswith(name.rsplit("/", 1)[-1])):
        return (
            f"the header at byte {header_at} is {info.name!r} of {info.size} bytes, the index says {name!r} of {size}"
        )
    return None


def _open(fs: AbstractFileSystem, ref: IndexRef) -> sqlite3.Connection:
    """The index, read-only: a local file in place; a remote one fetched once per process (one GET)."""
    if storage.is_local(fs):
        local = ref.path
    else:
        local = _CACHE.get((storage.url(fs, ref.path), ref.size), "")
        if not local:
            while len(_CACHE) >= 2:  # a run reads few inputs' indexes; do not fill the scratch disk
                old = _CACHE.pop(next(iter(_CACHE)))
                with contextlib.suppress(OSError):
                    os.remove(old)
            if not _TMP:
                _TMP.append(tempfile.TemporaryDirectory(prefix="raymerge-index-"))
            local = os.path.join(_TMP[0].name, f"{len(os.listdir(_TMP[0].name))}.sqlite")
            try:
                fs.get_file(ref.path, local)
            except OSError as e:
                raise InvalidInput(f"{storage.url(fs, ref.path)}: could not be read ({e})") from e
            _CACHE[(storage.url(fs, ref.path), ref.size)] = local
    return sqlite3.connect(f"file:{local}?mode=ro&immutable=1", uri=True)
