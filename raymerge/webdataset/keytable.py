"""Small per-sample tables (key, order, member locations) and the hash/range partitioning of them.

One row per sample: `key`, `order` (int64 that sorts rows into output order), and per member the
output extension `names`, source shard id `srcs`, data `offsets` and `sizes`, plus `nbytes`.
Rows never hold payload, so these tables stay small and travel between Ray tasks cheaply.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

ORDINAL_BITS = 32
SCHEMA = {
    "key": pl.String,
    "order": pl.Int64,
    "names": pl.List(pl.String),
    "srcs": pl.List(pl.Int32),
    "offsets": pl.List(pl.Int64),
    "sizes": pl.List(pl.Int64),
    "nbytes": pl.Int64,
}


def empty() -> pl.DataFrame:
    return pl.DataFrame(schema=SCHEMA)


def shard_order(shard_ids: np.ndarray, ordinals: np.ndarray) -> np.ndarray:
    """Input order: shard by shard (in the order inputs and shards were given), then within the shard."""
    return (shard_ids.astype(np.int64) << ORDINAL_BITS) | ordinals.astype(np.int64)


def shuffled_order(keys: Sequence[str], seed: int) -> np.ndarray:
    """A seeded order that depends only on the key, so the same config shuffles the same way anywhere."""
    salt = seed.to_bytes(8, "little", signed=True)
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8, salt=salt).digest(), "little") >> 1 for k in keys),
        dtype=np.int64,
        count=len(keys),
    )


def frame(
    scanned: Sequence[dict[str, Any]],
    first_id: int,
    *,
    key_prefix: str = "",
    ext_prefix: str = "",
    shuffle_seed: int | None = None,
) -> pl.DataFrame:
    """Scanned shards (ids `first_id`, `first_id + 1`, ...; at least one) as one key table, with
    input-level renames (key prefix, member prefix) applied.

    Built in Arrow and handed to polars once for all the shards: member lists come from the flat
    member columns through offsets (polars builds list columns from nested Python lists two
    orders of magnitude slower), and each conversion has a fixed cost worth sharing.
    """
    counts = np.array([len(t["key"]) for t in scanned], dtype=np.int64)
    shard = np.repeat(np.arange(first_id, first_id + len(scanned), dtype=np.int64), counts)
    keys = pa.concat_arrays([t["key"] for t in scanned])
    exts = pa.concat_arrays([t["exts"] for t in scanned])
    if key_prefix:
        keys = _prefixed(key_prefix, keys)
    if ext_prefix:
        exts = _prefixed(ext_prefix, exts)
    if shuffle_seed is None:
        order = shard_order(shard, np.arange(len(shard)) - np.repeat(np.cumsum(counts) - counts, counts))
    else:
        order = shuffled_order(keys.to_pylist(), shuffle_seed)
    members = np.concatenate([t["members"] for t in scanned])
    starts = pa.array(np.concatenate([[0], np.cumsum(members)]).astype(np.int32))

    def per_member(values: pa.Array) -> pa.ListArray:
        return pa.ListArray.from_arrays(starts, values)

    def flat(column: str) -> pa.Array:
        return pa.array(np.concatenate([t[column] for t in scanned]))

    table = pa.table(
        {
            "key": keys,
            "order": pa.array(order),
            "names": per_member(exts),
            "srcs": per_member(pa.array(np.repeat(shard, members).astype(np.int32))),
            "offsets": per_member(flat("offsets")),
            "sizes": per_member(flat("sizes")),
            "nbytes": flat("nbytes"),
        }
    )
    return pl.from_arrow(table).cast(SCHEMA)  # type: ignore[return-value]


def _prefixed(prefix: str, strings: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(pa.scalar(prefix, strings.type), strings, pa.scalar("", strings.type))


def hash_buckets(keys: pl.Series, n: int) -> np.ndarray:
    """Which hash bucket each key belongs to: equal keys of every input meet in the same bucket (every
    task of a run hashes with the same polars, so the same key gets the same bucket)."""
    return (keys.hash(seed=0) % n).cast(pl.Int64).to_numpy()


def split_by(df: pl.DataFrame, part: np.ndarray, n: int) -> list[pl.DataFrame]:
    """Rows of `df` in `n` parts by the part number of each row (row order kept inside a part)."""
    tagged = df.with_columns(pl.Series("_part", part, dtype=pl.Int64))
    groups = {k[0]: g.drop("_part") for k, g in tagged.group_by("_part", maintain_order=True)}
    return [groups.get(i, df.clear()) for i in range(n)]


def range_parts(order: np.ndarray, boundaries: Sequence[int]) -> np.ndarray:
    """Part number per row: part i holds orders in [boundaries[i], boundaries[i+1])."""
    return np.searchsorted(np.asarray(boundaries, dtype=np.int64), order, side="right") - 1


def duplicates(df: pl.DataFrame, limit: int = 10) -> tuple[int, list[tuple[str, list[int]]]]:
    """How many keys occur more than once, and up to `limit` of them with the shards they occur in."""
    dup = (
        df.select("key", pl.col("srcs").list.first().alias("shard"))
        .group_by("key")
        .agg(pl.col("shard"), pl.len().alias("n"))
        .filter(pl.col("n") > 1)
        .sort("key")
    )
    return dup.height, [(r["key"], sorted(set(r["shard"]))) for r in dup.head(limit).iter_rows(named=True)]
