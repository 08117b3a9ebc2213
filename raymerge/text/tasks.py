"""The work of a text merge's tasks, as plain functions.

The executor runs them as Ray tasks or in this process; tests call them directly on tables.
Their arguments and results are small values or tables, never open files or connections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pyarrow as pa
from fsspec import AbstractFileSystem

from raymerge.text import sinks
from raymerge.text.blocks import SourceSlice, assemble_block
from raymerge.text.columns import PAIR_SCHEMA, choose_mapping, normalise
from raymerge.text.readers import chunk_schema, read_chunk
from raymerge.text.sources import Chunk

if TYPE_CHECKING:
    from raymerge.text.plan import TargetPlan


@dataclass
class ChunkStats:
    """What the driver learns from scanning a chunk: counts for the report and the order, the mapping to
    check that a source's files agree, and (for dedup) the pairs' hashes; never the pairs themselves."""

    rows_in: int
    rows: int
    dropped: int
    mapping: str | None
    hashes: np.ndarray | None = None


def scan_chunk(
    fs: AbstractFileSystem,
    chunk: Chunk,
    where: str,
    input_column: str | None,
    output_column: str | None,
    with_hashes: bool,
) -> tuple[ChunkStats, pa.Table]:
    """Read one chunk and normalise it to pairs; parquet reads only the mapped columns. The pairs stay with
    the executor for the block tasks, only the stats go to the driver."""
    schema = chunk_schema(fs, chunk)
    if schema is not None:
        mapping = choose_mapping(schema, where, input_column, output_column)
        table = read_chunk(fs, chunk, mapping.columns())
    else:
        table = read_chunk(fs, chunk)
        if table.num_columns == 0:
            empty = PAIR_SCHEMA.empty_table()
            return ChunkStats(0, 0, 0, None, pair_hashes(empty) if with_hashes else None), empty
        mapping = choose_mapping(table.schema, where, input_column, output_column)
    pairs, rows_in, dropped = normalise(table, mapping)
    stats = ChunkStats(
        rows_in, pairs.num_rows, dropped, mapping.describe(), pair_hashes(pairs) if with_hashes else None
    )
    return stats, pairs


def pair_hashes(pairs: pa.Table) -> np.ndarray:
    """A 128-bit identity per pair (two 64-bit hashes): exact duplicates are found on the driver from these
    alone, without moving the text."""
    df = pl.DataFrame(pairs)
    h = np.empty((pairs.num_rows, 2), np.uint64)
    h[:, 0] = df["input"].hash(seed=0x5EED).to_numpy()
    h[:, 1] = df["output"].hash(seed=0xD0D0).to_numpy()
    return h


def write_block(
    order: np.ndarray,
    keep: np.ndarray | None,
    slices: list[SourceSlice],
    fs: AbstractFileSystem,
    part_dir: str,
    index: int,
    kinds: list[str],
    *tables: pa.Table,
) -> int:
    """Assemble one output block from the chunks it needs (`tables`, in `slices` order), drop duplicates
    (`keep`), and write its parts; returns the rows written, which the plan checks."""
    table = assemble_block(order, slices, tables)
    if keep is not None:
        table = table.filter(keep)
    sinks.write_parts(table, fs, part_dir, index, kinds)
    return table.num_rows


def write_target(
    target: TargetPlan,
    parts_fs: AbstractFileSystem,
    part_dir: str,
    blocks: int,
    out_fs: AbstractFileSystem,
    out_path: str,
    existing_db: str | None,
) -> None:
    """Stream every block's part into one target file, in block order: one task per file, so the output and
    each export are written at the same time."""
    kind = sinks.PART_KIND[target.format]
    parts = [sinks.part_path(part_dir, kind, i) for i in range(blocks)]
    sinks.assemble(target.format, parts_fs, parts, out_fs, out_path, target.session, existing_db)
