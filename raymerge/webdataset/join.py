"""The key join of one hash bucket: the primary decides which samples exist and their order.

Each bucket holds every row whose key hashes to it, from every input, so a bucket joins on its own;
no task ever sees all keys. Secondaries with `nonmatch: skip` drop the sample, `none` keep it
without that input's members, `error` count the key as missing (the plan fails before writing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from raymerge.webdataset import inline, keytable

MEMBER_COLUMNS = ("names", "srcs", "offsets", "sizes", "data")  # "data" last (`_take`)
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
    lists of the kept rows are then put together once, with array arithmetic over all of them
    (`concat_lists`): polars' own row-wise list concatenation costs more than the join itself.
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
    base = primary[kept] if len(kept) < primary.height else primary
    tables = [base.to_arrow()] + [_take(sec, row) for sec, row in zip(secondaries, picked, strict=True)]
    lists = concat_lists([[t.column(c).combine_chunks() for t in tables] for c in MEMBER_COLUMNS])
    nbytes = np.sum([pc.fill_null(t.column("nbytes"), 0).to_numpy() for t in tables], axis=0)
    out = base.with_columns(
        *(pl.Series(c, values) for c, values in zip(MEMBER_COLUMNS, lists, strict=True)),
        pl.Series("nbytes", nbytes, dtype=pl.Int64),
    ).cast(keytable.SCHEMA)
    stats.rows_out = out.height
    return out, stats


def _take(table: pl.DataFrame, rows: np.ndarray) -> pa.Table:
    """The rows of `table` at `rows` (-1: a null row, no members); the carried payloads by `inline.take`."""
    arrow = table.select(*MEMBER_COLUMNS[:-1], "nbytes").to_arrow()
    taken = arrow.take(pa.array(np.maximum(rows, 0), mask=rows < 0))
    return taken.append_column("data", inline.take(table["data"].to_arrow(), rows))


def concat_lists(columns: Sequence[Sequence[pa.Array]]) -> list[pa.Array]:
    """Row-wise concatenation of list arrays: for each column, row i of the result is row i of every
    array in turn (a null row counts as empty). All columns share their row lengths (member lists of
    one table), so one permutation of the flat values serves every column."""
    first = columns[0]
    lengths = [pc.fill_null(pc.list_value_length(a), 0).to_numpy().astype(np.int64) for a in first]
    n = len(lengths[0])
    total = np.sum(lengths, axis=0) if lengths else np.zeros(n, dtype=np.int64)
    out_offsets = np.concatenate([[0], np.cumsum(total)])
    before = np.zeros(n, dtype=np.int64)  # members of earlier arrays in the same row
    dest = []
    for length in lengths:
        row = np.repeat(np.arange(n), length)
        within = np.arange(len(row)) - np.repeat(np.cumsum(length) - length, length)
        dest.append(out_offsets[:-1][row] + before[row] + within)
        before += length
    order = np.empty(int(out_offsets[-1]), dtype=np.int64)
    order[np.concatenate(dest)] = np.arange(len(order))
    take = pa.array(order)
    offsets = pa.array(out_offsets.astype(np.int64))
    out = []
    for arrays in columns:
        values = pa.concat_arrays([pc.list_flatten(a) for a in arrays])
        nested = pa.types.is_large_list(values.type) or pa.types.is_list(values.type)
        values = inline.take(values, order) if nested else values.take(take)  # carried payloads: lists of bytes
        out.append(pa.LargeListArray.from_arrays(offsets, values))
    return out
