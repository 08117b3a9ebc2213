"""Assembling one output block from the scanned chunks of every source.

Each block needs one contiguous (wrapping) range of appearances per source (`combine.plan_blocks`);
a block task receives only the chunks that hold those rows and puts them in the output order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from raymerge.text.columns import PAIR_SCHEMA


@dataclass(frozen=True)
class SourceSlice:
    """What a block needs from one source: `count` rows from appearance `first`, wrapping at
    `length`, found in the given chunks (which start at the given source rows)."""

    source: int
    first: int
    count: int
    length: int
    chunk_starts: tuple[int, ...]


def chunks_for(first: int, count: int, length: int, chunk_starts: Sequence[int]) -> list[int]:
    """Indexes of the chunks holding rows (first + i) % length for i < count: a block task is sent only those."""
    if count == 0:
        return []
    if count >= length:
        return list(range(len(chunk_starts)))
    lo = first % length
    ranges = [(lo, min(lo + count, length))]
    if lo + count > length:
        ranges.append((0, lo + count - length))
    bounds = [*chunk_starts, length]
    return [
        i
        for i in range(len(chunk_starts))
        if bounds[i] < bounds[i + 1] and any(bounds[i] < hi and lo_ < bounds[i + 1] for lo_, hi in ranges)
    ]


def assemble_block(
    order: np.ndarray, slices: Sequence[SourceSlice], tables: Sequence[pa.Table], schema: pa.Schema = PAIR_SCHEMA
) -> pa.Table:
    """Output rows in `order` (source per row) from each source's rows in appearance order (tables in `schema`);
    a concat block is a zero-copy slice, an interleaved one one gather."""
    pieces, t = [], 0
    for sl in slices:
        tabs = tables[t : t + len(sl.chunk_starts)]
        t += len(sl.chunk_starts)
        if sl.count == 0:
            continue
        cat = pa.concat_tables(tabs) if len(tabs) > 1 else tabs[0]
        starts = np.asarray(sl.chunk_starts, np.int64)
        offsets = np.concatenate([[0], np.cumsum([x.num_rows for x in tabs])[:-1]])
        lo = sl.first % sl.length
        if lo + sl.count <= sl.length:  # one contiguous range: a zero-copy slice
            local0 = lo - starts[0] + offsets[0]
            pieces.append(cat.slice(int(local0), sl.count))
            continue
        rows = (sl.first + np.arange(sl.count, dtype=np.int64)) % sl.length
        k = np.searchsorted(starts, rows, side="right") - 1
        pieces.append(cat.take(pa.array(rows - starts[k] + offsets[k])))
    grouped = pa.concat_tables(pieces) if pieces else schema.empty_table()
    if _interleaved(order):
        perm = np.argsort(order, kind="stable")
        inverse = np.empty_like(perm)
        inverse[perm] = np.arange(len(perm))
        grouped = grouped.take(pa.array(inverse))
    return grouped.combine_chunks()


def _interleaved(order: np.ndarray) -> bool:
    """False when rows are already grouped by source in ascending order (concat)."""
    return len(order) > 1 and bool((np.diff(order.astype(np.int64)) < 0).any())
