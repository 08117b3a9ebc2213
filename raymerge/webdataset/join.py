"""The key join of one hash bucket: the primary decides which samples exist and their order.

Each bucket holds every row whose key hashes to it, from every input, so a bucket joins on its own;
no task ever sees all keys. Secondaries with `nonmatch: skip` drop the sample, `none` keep it
without that input's members, `error` count the key as missing (the plan fails before writing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numba
import numpy as np
import polars as pl
import pyarrow as pa

from raymerge.webdataset import inline, keytable

MISSING_EXAMPLES = 10


@dataclass
class JoinStats:
    """Per secondary: how many primary keys matched and which did not (the first few in primary order)."""

    matched: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    missing_examples: list[list[tuple[int, str]]] = field(default_factory=list)
    used: list[int] = field(default_factory=list)
    rows_out: int = 0


def join_bucket(
    primary: pl.DataFrame, secondaries: list[pl.DataFrame], nonmatch: list[str]
) -> tuple[pl.DataFrame, JoinStats]:
    """Left-join each secondary onto the primary by exact key; members appended in input order.

    Only the keys go through the join (each primary row learns its row in each secondary); the member
    lists of the kept rows are then put together once for all inputs (`gather_members`).
    """
    stats = JoinStats()
    keep = np.ones(primary.height, dtype=bool)
    matches: list[np.ndarray] = []
    keys = primary.select("key")
    for sec, mode in zip(secondaries, nonmatch, strict=True):
        rows = sec.select("key", pl.int_range(pl.len(), dtype=pl.Int64).alias("_row"))
        row = keys.join(rows, on="key", how="left", maintain_order="left")["_row"].fill_null(-1).to_numpy()
        hit = row >= 0
        missing = primary.filter(pl.Series(~hit)).select("order", "key")
        stats.matched.append(int(hit.sum()))
        stats.missing.append(missing.height)
        stats.missing_examples.append(list(missing.bottom_k(MISSING_EXAMPLES, by="order").sort("order").iter_rows()))
        if mode == "skip":
            keep &= hit
        matches.append(row)
    kept = np.flatnonzero(keep)
    picked = [row[kept] for row in matches]
    stats.used = [int((row >= 0).sum()) for row in picked]
    inputs, taken = [primary, *secondaries], [kept, *picked]
    members = gather_members([t.select(*keytable.MEMBER_COLUMNS).to_arrow() for t in inputs], taken)
    nbytes = np.zeros(len(kept), dtype=np.int64)
    for table, at in zip(inputs, taken, strict=True):
        nbytes += np.where(at >= 0, table["nbytes"].to_numpy()[np.maximum(at, 0)], 0)
    keys = primary.select("key", "order")
    out = (
        (keys[kept] if len(kept) < primary.height else keys)
        .with_columns(
            *(pl.Series(c, values) for c, values in zip(keytable.MEMBER_COLUMNS, members, strict=True)),
            pl.Series("nbytes", nbytes, dtype=pl.Int64),
        )
        .cast(keytable.SCHEMA)
    )
    stats.rows_out = out.height
    return out, stats


def gather_members(tables: Sequence[pa.Table], rows: Sequence[np.ndarray]) -> list[pa.Array]:
    """Per member column, row i of the result holds the members of row `rows[t][i]` of every table t in
    turn (-1: none from that table). One permutation of all the tables' flat member values serves every
    column (they share their list lengths), taken once per column: no intermediate table per secondary,
    and no row-wise list concatenation (polars' own costs more than the join)."""
    lists = [[t.column(c).combine_chunks() for t in tables] for c in keytable.MEMBER_COLUMNS]
    offsets = [a.offsets.to_numpy().astype(np.int64) for a in lists[0]]
    offsets = [off - off[0] for off in offsets]  # into each table's flattened values (`flatten`: its slice only)
    starts = np.cumsum([0] + [off[-1] for off in offsets[:-1]])  # each table's values in the concatenation
    out_offsets, order = _member_order(np.stack(rows), offsets, starts.astype(np.int64))
    bounds = pa.array(out_offsets.astype(np.int64))
    out = []
    for arrays in lists:
        values = pa.concat_arrays([a.flatten() for a in arrays])
        nested = pa.types.is_large_list(values.type) or pa.types.is_list(values.type)
        taken = inline.take(values, order) if nested else values.take(pa.array(order))  # carried: lists of bytes
        out.append(pa.LargeListArray.from_arrays(bounds, taken))
    return out


def _member_order(rows: np.ndarray, offsets: Sequence[np.ndarray], starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """List offsets of the joined rows and, for each of their members, its position in the concatenated flat
    values of every table (`starts[t]`: where table t's begin)."""
    lengths = np.zeros(rows.shape[1], dtype=np.int64)
    for t, off in enumerate(offsets):
        lengths += np.where(rows[t] >= 0, np.diff(off)[np.maximum(rows[t], 0)], 0)
    out_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    order = np.empty(int(out_offsets[-1]), dtype=np.int64)
    filled = out_offsets[:-1].copy()  # where each row's next member goes
    for t, off in enumerate(offsets):
        _place(order, filled, rows[t], off, int(starts[t]))
    return out_offsets, order


@numba.njit(cache=True, nogil=True)
def _place(order: np.ndarray, filled: np.ndarray, rows: np.ndarray, offsets: np.ndarray, start: int) -> None:
    """Append one table's members to each output row's list in `order` (called table by table, in input
    order; `filled` is where each row's next member goes): compiled, one short run per row, millions of
    rows per bucket."""
    for i in range(len(rows)):
        r = rows[i]
        if r < 0:
            continue
        at = filled[i]
        for m in range(offsets[r], offsets[r + 1]):
            order[at] = start + m
            at += 1
        filled[i] = at
