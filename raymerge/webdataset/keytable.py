"""Small per-sample tables (key, order, member locations) and the hash/range partitioning of them.

One row per sample: `key`, `order` (int64 that sorts rows into output order), and per member the
output extension `names`, source shard id `srcs`, data `offsets` and `sizes`, plus `nbytes`.
Rows never hold payload, so these tables stay small and travel between Ray tasks cheaply.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence

import numpy as np
import polars as pl
import pyarrow as pa

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


def shard_order(shard_id: int, ordinals: Sequence[int]) -> np.ndarray:
    """Input order: shard by shard (in the order inputs and shards were given), then within the shard."""
    return (np.int64(shard_id) << ORDINAL_BITS) | np.asarray(ordinals, dtype=np.int64)


def shuffled_order(keys: Sequence[str], seed: int) -> np.ndarray:
    """A seeded order that depends only on the key, so the same config shuffles the same way anywhere."""
    salt = seed.to_bytes(8, "little", signed=True)
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8, salt=salt).digest(), "little") >> 1 for k in keys),
        dtype=np.int64,
        count=len(keys),
    )


def frame(
    scanned: dict[str, list],
    shard_id: int,
    *,
    key_prefix: str = "",
    ext_prefix: str = "",
    shuffle_seed: int | None = None,
) -> pl.DataFrame:
    """A scanned shard as a key table, with input-level renames (key prefix, member prefix) applied.

    Member lists are built from the flat member columns through Arrow offsets: polars builds list
    columns from nested Python lists two orders of magnitude slower.
    """
    n = len(scanned["key"])
    keys = [key_prefix + k for k in scanned["key"]] if key_prefix else scanned["key"]
    order = shard_order(shard_id, range(n)) if shuffle_seed is None else shuffled_order(keys, shuffle_seed)
    starts = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(scanned["members"], out=starts[1:])
    starts_array = pa.array(starts)

    def members(values: pa.Array) -> pa.ListArray:
        return pa.ListArray.from_arrays(starts_array, values)

    names = [ext_prefix + e for e in scanned["exts"]] if ext_prefix else scanned["exts"]
    table = pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "order": pa.array(order),
            "names": members(pa.array(names, pa.string())),
            "srcs": members(pa.array(np.full(int(starts[-1]), shard_id, dtype=np.int32))),
            "offsets": members(pa.array(np.asarray(scanned["offsets"], dtype=np.int64))),
            "sizes": members(pa.array(np.asarray(scanned["sizes"], dtype=np.int64))),
            "nbytes": pa.array(np.asarray(scanned["nbytes"], dtype=np.int64)),
        }
    )
    return pl.from_arrow(table).cast(SCHEMA)  # type: ignore[return-value]


def hash_buckets(keys: Sequence[str], n: int) -> np.ndarray:
    """Which hash bucket each key belongs to: equal keys of every input meet in the same bucket."""
    return np.fromiter((zlib.crc32(k.encode()) % n for k in keys), dtype=np.int64, count=len(keys))


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
