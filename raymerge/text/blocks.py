"""The work of one task, as plain functions: scan a chunk into pairs, assemble an output block.

Ray only wraps these (see `pipeline`), so they are tested directly on tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
from fsspec import AbstractFileSystem

from raymerge.text.columns import PAIR_SCHEMA, Mapping, choose_mapping, normalise
from raymerge.text.sources import Chunk, chunk_schema, read_chunk


@dataclass
class ChunkStats:
    rows_in: int
    rows: int
    dropped: int
    mapping: str | None
    hashes: np.ndarray | None = None


def mapping_columns(m: Mapping) -> list[str]:
    return [c for c in (m.input, m.output, m.extra) if c]


def scan_chunk(
    fs: AbstractFileSystem,
    chunk: Chunk,
    where: str,
    input_column: str | None,
    output_column: str | None,
    with_hashes: bool,
) -> tuple[ChunkStats, pa.Table]:
    """Read one chunk and normalise it to pairs; parquet reads only the mapped columns."""
    schema = chunk_schema(fs, chunk)
    if schema is not None:
        mapping = choose_mapping(schema, where, input_column, output_column)
        table = read_chunk(fs, chunk, mapping_columns(mapping))
    else:
        table = read_chunk(fs, chunk)
        if table.num_columns == 0:
            return ChunkStats(0, 0, 0, None, _hashes(PAIR_SCHEMA.empty_table()) if with_hashes else None), (
                PAIR_SCHEMA.empty_table()
            )
        mapping = choose_mapping(table.schema, where, input_column, output_column)
    pairs, rows_in, dropped = normalise(table, mapping)
    stats = ChunkStats(rows_in, pairs.num_rows, dropped, mapping.describe(), _hashes(pairs) if with_hashes else None)
    return stats, pairs


def _hashes(pairs: pa.Table) -> np.ndarray:
    """A 128-bit identity per pair (two 64-bit hashes), for exact-duplicate detection."""
    df = pl.from_arrow(pairs)
    h = np.empty((pairs.num_rows, 2), np.uint64)
    h[:, 0] = df["input"].hash(seed=0x5EED).to_numpy()
    h[:, 1] = df["output"].hash(seed=0xD0D0).to_numpy()
    return h


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
    """Indexes of the chunks holding rows (first + i) % length for i < count."""
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


def assemble_block(order: np.ndarray, slices: Sequence[SourceSlice], tables: Sequence[pa.Table]) -> pa.Table:
    """Output rows in `order` (source per row) from each source's rows in appearance order."""
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
    grouped = pa.concat_tables(pieces) if pieces else PAIR_SCHEMA.empty_table()
    if _interleaved(order):
        perm = np.argsort(order, kind="stable")
        inverse = np.empty_like(perm)
        inverse[perm] = np.arange(len(perm))
        grouped = grouped.take(pa.array(inverse))
    return grouped.combine_chunks()


def _interleaved(order: np.ndarray) -> bool:
    """False when rows are already grouped by source in ascending order (concat)."""
    return len(order) > 1 and bool((np.diff(order.astype(np.int64)) < 0).any())
