"""The task bodies of a WebDataset run: plain functions the executor runs as Ray tasks or in this process.

plan: `scan_shards` (one per run of shards) -> `check_and_join` (one per hash bucket) -> `sort_range`
(one per range of the output order) or `gather_blend` (one per chunk of a blend) -> `pack_chunk` (a
chain, one per ordered chunk). execute: `chunk_keys` (one per ordered chunk, for the index of keys), then
`write_output_shards` (one or a few consecutive output shards per task, taking their rows from the
ordered chunks they overlap, and building their `index.sqlite` rows). Arguments and results are small
key tables, index row images and plain values, never payload.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from fsspec import AbstractFileSystem

from raymerge import directio, storage, transport
from raymerge.errors import RunFailed
from raymerge.transport import ArrowFrame, unpack
from raymerge.webdataset import energon, inline, keytable, layout, sourceindex, tarindex
from raymerge.webdataset.join import JoinStats, join_bucket
from raymerge.webdataset.layout import OutputShard
from raymerge.webdataset.sourceindex import ShardIndex
from raymerge.webdataset.sources import Shard, scan
from raymerge.webdataset.writer import RangeReader, output_keys, write_shard


@dataclass(frozen=True)
class ScanOptions:
    """How an input's keys and member names are rewritten, and how its rows are ordered and bucketed."""

    key_prefix: str = ""
    ext_prefix: str = ""
    shuffle_seed: int | None = None
    buckets: int = 0
    keep_whole: bool = True  # also return the whole key table (for orders that need no range sort)
    inline_bytes: int = 0  # tiny members' payload the task carries in its key table, at most (`inline`)


@dataclass
class BucketResult:
    """What the driver learns from one hash bucket: duplicated keys per checked group, and the join's counts."""

    duplicates: list[tuple[int, list[tuple[str, list[int]]]]] = field(default_factory=list)
    join: JoinStats | None = None


def scan_shards(
    shards: Sequence[Shard],
    fs: AbstractFileSystem,
    first_id: int,
    opts: ScanOptions,
    indexed: Sequence[ShardIndex | None] = (),
) -> tuple[Any, ...]:
    """Per-shard summaries, the shards' whole key table (or None) and its `opts.buckets` hash buckets.

    Local plain shards carry their tiny members' payload in the table (`inline`), up to
    `opts.inline_bytes` for the task, so that the writers need not read those members again.

    A shard with an entry in `indexed` is read from its input's index, or scanned when the index does
    not fit it (its summary's `index` says which). Bad input raises here, naming the shard and member.
    """
    tables, notes = [], []
    for i, shard in enumerate(shards):
        where = indexed[i] if i < len(indexed) else None
        members, why = sourceindex.members(fs, shard, where) if where is not None else (None, None)
        if members is None:
            carry = inline.budget(shard.size, opts.inline_bytes, len(shards)) if opts.inline_bytes else 0
            table = scan(fs, shard, carry)
        else:
            table = tarindex.table(members, shard.name, shard.size)
        tables.append(table)
        notes.append(None if where is None else (why or "used"))
    df = keytable.frame(
        tables, first_id, key_prefix=opts.key_prefix, ext_prefix=opts.ext_prefix, shuffle_seed=opts.shuffle_seed
    )
    summaries = [{**tarindex.summarize(t), "index": note} for t, note in zip(tables, notes, strict=True)]
    buckets = (
        keytable.split_by(df, keytable.hash_buckets(df["key"], opts.buckets), opts.buckets) if opts.buckets else []
    )
    return (summaries, df if opts.keep_whole else None, *buckets)


def check_and_join(
    operation: str,
    group_sizes: Sequence[int],
    nonmatch: Sequence[str],
    check_duplicates: bool,
    boundaries: Sequence[int] | None,
    *pieces: pl.DataFrame | ArrowFrame,
) -> tuple[Any, ...]:
    """One hash bucket: duplicate keys (per input for a join, across inputs otherwise) and the join; with
    `boundaries`, the bucket's rows split into those ranges of the output order.

    `pieces` are the bucket's tables from every scan task, grouped by input (`group_sizes` of them each).
    """
    frames = [unpack(p) for p in pieces]
    groups, i = [], 0
    for n in group_sizes:
        groups.append(pl.concat(frames[i : i + n]) if n else keytable.empty())
        i += n
    result = BucketResult()
    if operation == "join":
        result.duplicates = [keytable.duplicates(g) for g in groups]
        rows, result.join = join_bucket(groups[0], groups[1:], list(nonmatch))
    else:
        rows = pl.concat(groups)
        result.duplicates = [keytable.duplicates(rows)] if check_duplicates else []
    if boundaries is None:
        return (result,)
    parts = keytable.split_by(rows, keytable.range_parts(rows["order"].to_numpy(), boundaries), len(boundaries))
    return (result, *parts)


def sort_range(*parts: pl.DataFrame | ArrowFrame) -> pl.DataFrame:
    """One range of the output order, from its part of every bucket, sorted."""
    return pl.concat([unpack(p) for p in parts]).sort("order")


def gather_blend(
    inputs: np.ndarray, rows: np.ndarray, sources: Sequence[tuple[int, int, int]], first: int, *tables: pl.DataFrame
) -> tuple[int, pl.DataFrame]:
    """One chunk of a blend (`layout.BlendChunk`): its samples' rows taken from the inputs' key tables, in
    blended order: (samples, rows)."""
    out = keytable.empty().with_columns(pl.lit(0, dtype=pl.Int64).alias("_pos"))
    parts, i = [], 0
    for s, start, n in sources:
        table = pl.concat(tables[i : i + n])
        i += n
        pos = np.flatnonzero(inputs == s)
        taken = table[(rows[pos] - start).tolist()].with_columns(pl.Series("_pos", pos, dtype=pl.Int64))
        parts.append(taken)
    ordered = pl.concat([out, *parts]).sort("_pos")
    ordered = ordered.with_columns((pl.col("_pos") + first).alias("order")).drop("_pos")
    return ordered.height, ordered


def chunk_sizes(df: pl.DataFrame) -> np.ndarray:
    """Payload bytes per sample of an ordered chunk: all the driver reads to cut output shards."""
    return df["nbytes"].to_numpy()


@transport.takes_frames_as_sent
def pack_chunk(
    df: pl.DataFrame | ArrowFrame, state: layout.PackState, chunk: int, maxcount: int, maxsize: int
) -> tuple[list[tuple[int, int, int, int, int]], layout.PackState]:
    """Output shard pieces of one ordered chunk (`layout.pack_chunk`), packing on from the previous chunk's
    state: the per-sample sizes stay in the task; the driver gets pieces, one or a few per shard."""
    return layout.pack_chunk(chunk, transport.column(df, "nbytes").to_numpy(), state, maxcount, maxsize)


def cut_chunk(df: pl.DataFrame, bounds: Sequence[tuple[int, int]]) -> ArrowFrame | tuple[ArrowFrame, ...]:
    """The (first row, end row) pieces of an ordered chunk (`transport.slices`), one return value each: what
    tasks elsewhere in a cluster (Ray Data's read tasks) take instead of whole chunks."""
    parts = tuple(transport.slices(df, bounds))
    return parts[0] if len(parts) == 1 else parts


@transport.takes_frames_as_sent
def chunk_keys(chunk: pl.DataFrame | ArrowFrame, start: int, renumber_width: int | None) -> pa.Array:
    """The keys an ordered chunk's rows get in the output (the first being sample `start` of the output),
    as the writers give them (`output_keys`): for the index of keys, built before the shards are written."""
    keys = transport.column(chunk, "key")
    named = output_keys(keys.to_frame(), start, renumber_width)
    return named.to_arrow(compat_level=pl.CompatLevel.oldest())


def chunk_starts(specs: Sequence[OutputShard]) -> dict[int, int]:
    """Where each ordered chunk's first row lands in the output (its sample number), by chunk id, in
    output order: the shards' pieces run through the chunks one after the other."""
    starts: dict[int, int] = {}
    for spec in specs:
        at = spec.start
        for c, a, b in spec.pieces:
            starts.setdefault(c, at - a)
            at += b - a
    return starts


def chunks_of(specs: Sequence[OutputShard]) -> list[int]:
    """The ordered chunks some output shards' rows come from, in the order their writer takes them."""
    return sorted({c for spec in specs for c, _, _ in spec.pieces})


@transport.takes_frames_as_sent
def write_output_shards(
    specs: list[OutputShard],
    shards: Sequence[Shard],
    filesystems: list[AbstractFileSystem],
    out_fs: AbstractFileSystem,
    root: str,
    mtime: int,
    renumber_width: int | None,
    index: bool,
    *chunks: pl.DataFrame | ArrowFrame,
) -> tuple[list[dict[str, Any]], list[energon.IndexRows] | None]:
    """Consecutive output tars, each with its .tar.idx: (their summaries, their Energon index rows for
    index.sqlite, `energon.index_rows`). A few shards per task when there are many: each task, its
    arguments and its results cost milliseconds of Ray's time, as much as a small shard's own writing.

    `chunks` are the ordered chunks the shards' pieces name (`chunks_of`), as sent: the writer takes its
    own rows of them, and no task cuts them for it. Payload is read from the input shards by range.
    """
    by_id = dict(zip(chunks_of(specs), chunks, strict=True))
    reader = RangeReader(shards, filesystems)
    summaries: list[dict[str, Any]] = []
    rows: list[Any] = []
    try:
        for spec in specs:
            summary, found = _write_output_shard(spec, by_id, reader, out_fs, root, mtime, renumber_width, index)
            summaries.append(summary)
            rows.append(found)
    finally:
        reader.close()
    return summaries, rows if index else None


def _write_output_shard(
    spec: OutputShard,
    chunks: dict[int, pl.DataFrame | ArrowFrame],
    reader: RangeReader,
    out_fs: AbstractFileSystem,
    root: str,
    mtime: int,
    renumber_width: int | None,
    index: bool,
) -> tuple[dict[str, Any], energon.IndexRows | None]:
    """One output tar and its .tar.idx, from `spec.pieces` of `chunks` (by chunk id)."""
    rows = pl.concat([transport.rows(chunks[c], a, b) for c, a, b in spec.pieces])
    keys = output_keys(rows, spec.start, renumber_width)
    path = storage.join(root, spec.name)
    out_fs.makedirs(storage.parent(path), exist_ok=True)
    try:
        with directio.open_output(out_fs, path) as out:
            offsets, samples, parts = write_shard(rows, reader, out, keys=keys, mtime=mtime)
    except OSError as e:
        raise RunFailed(f"writing {spec.name}: {e}") from e
    with out_fs.open(path + energon.IDX_SUFFIX, "wb") as f:
        f.write(energon.tar_index_bytes(offsets))
    summary = {"name": spec.name, "samples": rows.height, "bytes": int(offsets[-1])}
    return summary, energon.index_rows(samples, parts) if index else None
