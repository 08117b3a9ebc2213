"""Ray at the edges: scan tasks, hash-bucket join/check tasks, range sort tasks, writer tasks.

plan: one scan task per input shard -> key tables split into hash buckets -> one task per bucket
(duplicate checks, the join) -> ordered chunks (range sort, input order, or the blend order) ->
output shards cut by the driver from per-chunk sample sizes. The driver holds counts, shard lists
and object references; key tables live in the object store, spread over the cluster.
execute: one writer task per output shard; an actor fills Energon's index.sqlite as the writers finish.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import ray
from fsspec import AbstractFileSystem

from raymerge.errors import InvalidInput
from raymerge.webdataset import keytable, tarindex
from raymerge.webdataset.join import JoinStats, join_bucket
from raymerge.webdataset.layout import blend_indices
from raymerge.webdataset.sources import Shard, open_shard

BLEND_CHUNK = 65_536
SCAN_BATCH_MAX = 32  # shards per scan task: small enough that the last tasks finish together


@dataclass
class ScanOptions:
    """How an input's keys and member names are rewritten, and how its rows are ordered and bucketed."""

    key_prefix: str = ""
    ext_prefix: str = ""
    shuffle_seed: int | None = None
    buckets: int = 0
    keep_whole: bool = True


@dataclass
class BucketResult:
    duplicates: list[tuple[int, list[tuple[str, list[int]]]]] = field(default_factory=list)  # per checked group
    join: JoinStats | None = None


@dataclass(frozen=True)
class Batch:
    """Consecutive shards of one input scanned by one task, and the ref of their whole key table (or None)."""

    input: int
    samples: int
    whole: Any


def scan_shards(shards: Sequence[Shard], fs: AbstractFileSystem, first_id: int, opts: ScanOptions) -> tuple[Any, ...]:
    """Per-shard summaries, the batch's whole key table (or None) and its hash buckets.

    Several shards per task: a shard's scan takes milliseconds, so a task per shard would be
    mostly task overhead and many tiny objects.
    """
    tables = []
    for shard in shards:
        with open_shard(fs, shard) as f:
            tables.append(
                tarindex.scan_tar(
                    f, shard.name, compressed=shard.compressed, size=None if shard.compressed else shard.size
                )
            )
    df = keytable.frame(
        tables, first_id, key_prefix=opts.key_prefix, ext_prefix=opts.ext_prefix, shuffle_seed=opts.shuffle_seed
    )
    summaries = [tarindex.summarize(t) for t in tables]
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
    *pieces: pl.DataFrame,
) -> tuple[Any, ...]:
    """One hash bucket: duplicate keys (per input for a join, across inputs otherwise) and the join."""
    groups, i = [], 0
    for n in group_sizes:
        groups.append(pl.concat(pieces[i : i + n]) if n else keytable.empty())
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


def sort_range(*parts: pl.DataFrame) -> tuple[int, pl.DataFrame]:
    df = pl.concat(parts).sort("order")
    return df.height, df


def gather_blend(
    src: np.ndarray, idx: np.ndarray, sources: Sequence[tuple[int, int, int]], first: int, *frames: pl.DataFrame
) -> tuple[int, pl.DataFrame]:
    """Blended rows of one chunk: `sources` = (input, index of its first frame's first row, frames passed)."""
    out = keytable.empty().with_columns(pl.lit(0, dtype=pl.Int64).alias("_pos"))
    parts, i = [], 0
    for s, start, n in sources:
        table = pl.concat(frames[i : i + n])
        i += n
        pos = np.flatnonzero(src == s)
        taken = table[(idx[pos] - start).tolist()].with_columns(pl.Series("_pos", pos, dtype=pl.Int64))
        parts.append(taken)
    rows = pl.concat([out, *parts]).sort("_pos")
    rows = rows.with_columns((pl.col("_pos") + first).alias("order")).drop("_pos")
    return rows.height, rows


def chunk_sizes(df: pl.DataFrame) -> np.ndarray:
    return df["nbytes"].to_numpy()


def cut_chunk(df: pl.DataFrame, bounds: Sequence[tuple[int, int]]) -> pl.DataFrame | tuple[pl.DataFrame, ...]:
    parts = tuple(df[a:b] for a, b in bounds)
    return parts[0] if len(parts) == 1 else parts


scan_task = ray.remote(scan_shards)
bucket_task = ray.remote(check_and_join)
sort_task = ray.remote(sort_range).options(num_returns=2)
blend_task = ray.remote(gather_blend).options(num_returns=2)
sizes_task = ray.remote(chunk_sizes)
cut_task = ray.remote(cut_chunk)


def cut_chunks(chunks: Sequence[Any], wanted: Sequence[tuple[int, int, int]]) -> dict[tuple[int, int, int], Any]:
    """Refs of the (chunk, first row, end row) pieces: each chunk is read once, and each writer gets
    only its own rows rather than every chunk it overlaps."""
    by_chunk: dict[int, list[tuple[int, int]]] = {}
    for c, a, b in wanted:
        by_chunk.setdefault(c, []).append((a, b))
    out = {}
    for c, bounds in by_chunk.items():
        refs = cut_task.options(num_returns=len(bounds)).remote(chunks[c], bounds)
        for (a, b), ref in zip(bounds, [refs] if len(bounds) == 1 else refs, strict=True):
            out[(c, a, b)] = ref
    return out


def batches(shards: Sequence[Shard], tasks: int, most: int = SCAN_BATCH_MAX) -> list[tuple[int, int]]:
    """(first, end) runs of consecutive shards of one input: about `tasks` runs, at most `most` shards each."""
    per = max(1, min(most, -(-len(shards) // max(1, tasks))))
    out, start = [], 0
    for i in range(1, len(shards) + 1):
        if i == len(shards) or i - start >= per or shards[i].input != shards[start].input:
            out.append((start, i))
            start = i
    return out


def scan_all(
    shards: Sequence[Shard], filesystems: Sequence[AbstractFileSystem], options: Sequence[ScanOptions], tasks: int
) -> tuple[list[dict[str, Any]], list[Batch], list[list[Any]]]:
    """Summaries per shard (fetched), the batches with their whole-table refs, bucket refs per batch.

    Bad input raises here.
    """
    runs = batches(shards, tasks)
    refs = []
    for a, b in runs:
        opts = options[shards[a].input]
        refs.append(
            scan_task.options(num_returns=2 + opts.buckets).remote(shards[a:b], filesystems[shards[a].input], a, opts)
        )
    summaries = [s for per_batch in ray.get([r[0] for r in refs]) for s in per_batch]
    found = [
        Batch(shards[a].input, sum(s["samples"] for s in summaries[a:b]), r[1])
        for (a, b), r in zip(runs, refs, strict=True)
    ]
    return summaries, found, [list(r[2:]) for r in refs]


def run_buckets(
    operation: str,
    scanned: Sequence[Batch],
    n_inputs: int,
    bucket_refs: Sequence[Sequence[Any]],
    buckets: int,
    nonmatch: Sequence[str],
    check_duplicates: bool,
    boundaries: Sequence[int] | None,
) -> tuple[list[BucketResult], list[list[Any]]]:
    """One task per bucket; returns their results and, when ordering, the refs of each range part."""
    by_input = [[i for i, s in enumerate(scanned) if s.input == k] for k in range(n_inputs)]
    sizes = [len(ids) for ids in by_input]
    returns = 1 + (len(boundaries) if boundaries is not None else 0)
    outs = []
    for b in range(buckets):
        pieces = [bucket_refs[i][b] for ids in by_input for i in ids]
        ref = bucket_task.options(num_returns=returns).remote(
            operation, sizes, list(nonmatch), check_duplicates, boundaries, *pieces
        )
        outs.append(ref)
    if returns == 1:  # a single return is the whole tuple
        return [r[0] for r in ray.get(outs)], [[] for _ in outs]
    return ray.get([o[0] for o in outs]), [list(o[1:]) for o in outs]


def sort_ranges(range_refs: Sequence[Sequence[Any]], groups: int) -> tuple[list[int], list[Any]]:
    counts, chunks = [], []
    for r in range(groups):
        n, df = sort_task.remote(*[parts[r] for parts in range_refs])
        counts.append(n)
        chunks.append(df)
    return ray.get(counts), chunks


def blend_chunks(
    lengths: Sequence[int],
    weights: Sequence[float] | None,
    seed: int,
    strategy: str,
    frames_by_input: Sequence[Sequence[tuple[int, int, Any]]],
) -> tuple[list[int], list[Any], list[int]]:
    """Chunks of the blended order and samples drawn per input; each gathers its rows from the inputs' key tables it overlaps."""
    src, idx = blend_indices(lengths, weights, seed, strategy)
    lens = np.asarray(lengths, dtype=np.int64)
    idx = idx % lens[src]
    counts, chunks = [], []
    for first in range(0, len(src), BLEND_CHUNK):
        s_chunk, i_chunk = src[first : first + BLEND_CHUNK], idx[first : first + BLEND_CHUNK]
        sources, frames = [], []
        for s in np.unique(s_chunk).tolist():
            need = i_chunk[s_chunk == s]
            lo, hi = int(need.min()), int(need.max())
            overlap = [(start, ref) for start, n, ref in frames_by_input[s] if start <= hi and start + n > lo]
            sources.append((s, overlap[0][0], len(overlap)))
            frames.extend(ref for _, ref in overlap)
        n, df = blend_task.remote(s_chunk, i_chunk, sources, first, *frames)
        counts.append(n)
        chunks.append(df)
    return ray.get(counts), chunks, np.bincount(src, minlength=len(lengths)).tolist()


def raise_duplicates(
    results: Sequence[BucketResult], groups: Sequence[str], shards: Sequence[Shard], input_names: Sequence[str]
) -> None:
    """One error for every duplicated key found in any bucket: how many, and the first few with their shards."""
    for g, label in enumerate(groups):
        total = sum(r.duplicates[g][0] for r in results if r.duplicates)
        if not total:
            continue
        examples = sorted(ex for r in results if r.duplicates for ex in r.duplicates[g][1])[:10]
        shown = "; ".join(
            f"{k!r} in {', '.join(f'{input_names[shards[i].input]}/{shards[i].name}' for i in ids)}"
            for k, ids in examples
        )
        raise InvalidInput(
            f"{label}: {total} sample key(s) occur more than once (keys must be unique across all shards): {shown}"
        )
