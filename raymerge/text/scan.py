"""The scan of one chunk: its rows read and normalised, for the counting pass, the gather and `read_text`.

The counting pass keeps nothing: `count_chunk` returns counts (and, for dedup, 128-bit hashes; for whole rows,
the schema), never rows. Whole rows drop nothing, so where the format carries its row counts (parquet footers,
Arrow record-batch headers, SQLite) no row is read at all; anywhere else, and wherever normalisation may drop
rows, the chunk is read and normalised and only what the plan needs is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa
from fsspec import AbstractFileSystem

from raymerge.text.columns import DEFAULT_ROLES, PAIR_SCHEMA, RoleTable, choose_mapping, normalise
from raymerge.text.readers import chunk_schema, count_rows, read_chunk
from raymerge.text.sources import Chunk


@dataclass(frozen=True)
class ScanSpec:
    """What a scan makes of a chunk: whole rows (`keep`), or pairs by the auto-mapping and an input's hints;
    `hashes` for dedup."""

    keep: bool = False
    input_column: str | None = None
    output_column: str | None = None
    roles: RoleTable = DEFAULT_ROLES
    hashes: bool = False


@dataclass
class ChunkStats:
    """What the driver learns from scanning a chunk: counts for the report and the order, the mapping to
    check that a source's files agree, the schema (whole rows) to align sources, and (for dedup) the pairs'
    hashes; never the rows themselves."""

    rows_in: int
    rows: int
    dropped: dict[str, int] = field(default_factory=dict)
    mapping: str | None = None
    hashes: np.ndarray | None = None
    unknown_roles: dict[str, int] = field(default_factory=dict)
    schema: pa.Schema | None = None


def scan_chunk(fs: AbstractFileSystem, chunk: Chunk, where: str, spec: ScanSpec) -> tuple[ChunkStats, pa.Table]:
    """Read one chunk and normalise it to pairs (or keep its rows); parquet reads only the mapped columns. The
    stats are what the counting pass keeps, the rows what the gather assembles blocks from."""
    if spec.keep:
        table = read_chunk(fs, chunk)
        return ChunkStats(table.num_rows, table.num_rows, schema=table.schema), table
    schema = chunk_schema(fs, chunk)
    if schema is not None:
        mapping = choose_mapping(schema, where, spec.input_column, spec.output_column, spec.roles)
        table = read_chunk(fs, chunk, mapping.columns())
    else:
        table = read_chunk(fs, chunk)
        if table.num_columns == 0:
            empty = PAIR_SCHEMA.empty_table()
            return ChunkStats(0, 0, hashes=pair_hashes(empty) if spec.hashes else None), empty
        mapping = choose_mapping(table.schema, where, spec.input_column, spec.output_column, spec.roles)
    done = normalise(table, mapping)
    stats = ChunkStats(
        done.rows_in,
        done.pairs.num_rows,
        done.dropped,
        mapping.describe(),
        pair_hashes(done.pairs) if spec.hashes else None,
        done.unknown_roles,
    )
    return stats, done.pairs


def pair_hashes(pairs: pa.Table) -> np.ndarray:
    """A 128-bit identity per pair (two 64-bit hashes): exact duplicates are found on the driver from these
    alone, without moving the text."""
    df = pl.DataFrame(pairs)
    h = np.empty((pairs.num_rows, 2), np.uint64)
    h[:, 0] = df["input"].hash(seed=0x5EED).to_numpy()
    h[:, 1] = df["output"].hash(seed=0xD0D0).to_numpy()
    return h


def count_chunk(fs: AbstractFileSystem, chunk: Chunk, where: str, spec: ScanSpec) -> ChunkStats:
    """The counting pass over one chunk: `scan_chunk`'s stats, without its rows; for whole rows without dedup,
    from the format's own counts where it has them."""
    if spec.keep and not spec.hashes:
        counted = count_rows(fs, chunk)
        if counted is not None:
            rows, schema = counted
            return ChunkStats(rows, rows, schema=schema)
    return scan_chunk(fs, chunk, where, spec)[0]
