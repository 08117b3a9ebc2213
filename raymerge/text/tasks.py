"""The work of a text merge's tasks, as plain functions.

The executor runs them as Ray tasks or in this process; tests call them directly on tables.
Their arguments and results are small values or tables, never open files or connections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
from fsspec import AbstractFileSystem

from raymerge.text import folders, sinks
from raymerge.text.blocks import SourceSlice, assemble_block
from raymerge.text.columns import DEFAULT_ROLES, PAIR_SCHEMA, RoleTable, choose_mapping, normalise
from raymerge.text.features import conform
from raymerge.text.readers import chunk_schema, read_chunk
from raymerge.text.sources import Chunk

if TYPE_CHECKING:
    from raymerge.s3commit import PartUpload
    from raymerge.text.plan import TargetPlan


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
    rows stay with the executor for the block tasks, only the stats go to the driver."""
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


def _block(
    order: np.ndarray,
    keep: np.ndarray | None,
    slices: list[SourceSlice],
    schema: pa.Schema,
    tables: tuple[pa.Table, ...],
) -> pa.Table:
    table = assemble_block(order, slices, [conform(t, schema) for t in tables], schema)
    return table if keep is None else table.filter(keep)


def write_block(
    order: np.ndarray,
    keep: np.ndarray | None,
    slices: list[SourceSlice],
    fs: AbstractFileSystem,
    part_dir: str,
    index: int,
    kinds: list[str],
    schema: pa.Schema,
    *tables: pa.Table,
) -> tuple[int, int]:
    """Assemble one output block from the chunks it needs (`tables`, in `slices` order, put in `schema`), drop
    duplicates (`keep`), and write its parts; returns the rows written, which the plan checks, and their Arrow
    bytes, which size the shards of a dataset folder."""
    table = _block(order, keep, slices, schema, tables)
    sinks.write_parts(table, fs, part_dir, index, kinds)
    return table.num_rows, table.nbytes


def block_results(
    order: np.ndarray,
    keep: np.ndarray | None,
    slices: list[SourceSlice],
    kinds: list[str],
    schema: pa.Schema,
    *tables: pa.Table,
) -> tuple[Any, ...]:
    """`write_block` for an object-store run: the block's serialised forms are returned (one result each, in
    `kinds` order) instead of stored as files, so later tasks upload them once. First result: (rows, Arrow
    bytes, JSON-lines bytes or 0), small enough for the driver to group blocks into upload parts."""
    table = _block(order, keep, slices, schema, tables)
    out: list[Any] = []
    for kind in kinds:
        out.append(sinks.jsonl_bytes(table) if kind == "jsonl" else table)
    size = len(out[kinds.index("jsonl")]) if "jsonl" in kinds else 0
    return ((table.num_rows, table.nbytes, size), *out)


def upload_part(
    upload: PartUpload, number: int, fmt: str, items_before: bool, first: bool, last: bool, *bodies: bytes
) -> dict[str, Any]:
    """Part `number` of a JSON-lines or JSON target on object storage, from consecutive blocks' JSON-lines
    bodies (JSON framed by `sinks.json_piece`); the part's record, for the upload's completion."""
    if fmt == "json":
        data = sinks.json_piece(bodies, items_before=items_before, first=first, last=last)
    else:
        data = b"".join(bodies)
    return upload.put(number, data)


def write_target_from_blocks(
    target: TargetPlan,
    out_fs: AbstractFileSystem,
    out_path: str,
    existing_db: str | None,
    schema: pa.Schema,
    *blocks: Any,
) -> None:
    """One target file written by one task from every block's result (JSON-lines bodies, or Arrow tables), in
    block order: for a target that cannot be uploaded in parts (parquet, SQLite, a local file)."""
    if sinks.PART_KIND[target.format] == "jsonl":
        rows: Any = blocks
    else:
        rows = (batch for table in blocks for batch in table.to_batches())
    sinks.write_file(target.format, rows, out_fs, out_path, schema, target.session, existing_db)


def write_target(
    target: TargetPlan,
    parts_fs: AbstractFileSystem,
    part_dir: str,
    blocks: int,
    out_fs: AbstractFileSystem,
    out_path: str,
    existing_db: str | None,
    schema: pa.Schema,
) -> None:
    """Stream every block's part into one target file, in block order: one task per file, so the output and
    each export are written at the same time."""
    kind = sinks.PART_KIND[target.format]
    parts = [sinks.part_path(part_dir, kind, i) for i in range(blocks)]
    sinks.assemble(
        target.format, parts_fs, parts, out_fs, out_path, schema=schema, session=target.session, existing_db=existing_db
    )


# Rows [start, stop) of the output as one shard of a dataset folder, from the part files or the blocks' own
# tables holding them: one task per shard, all at once.
write_shard = folders.write_shard
