"""The work of a text merge's tasks, as plain functions.

The executor runs them as Ray tasks or in this process; tests call them directly on tables.
Their arguments and results are small values or tables, never open files or connections.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from fsspec import AbstractFileSystem

from raymerge.text import folders, sinks
from raymerge.text.gather import Run, gather

if TYPE_CHECKING:
    from raymerge.s3commit import PartUpload
    from raymerge.text.plan import TargetPlan

__all__ = [
    "block_results",
    "upload_part",
    "write_blocks",
    "write_run",
    "write_shard",
    "write_target",
    "write_target_from_blocks",
]


def write_run(
    run: Run, fs: AbstractFileSystem, part_dir: str, kinds: list[str], *given: pa.Table
) -> Iterator[dict[str, int]]:
    """Gather a run's blocks (from the sources, and the `given` tables of held chunks) and write each block's
    parts as soon as it is made; per block, its number, its rows (which the plan checks) and their Arrow bytes
    (which size a dataset folder's shards)."""
    for index, table in gather(run, given):
        sinks.write_parts(table, fs, part_dir, index, kinds)
        yield {"block": index, "rows": table.num_rows, "bytes": table.nbytes}


def write_blocks(
    run: Run, fs: AbstractFileSystem, part_dir: str, kinds: list[str], *given: pa.Table
) -> list[dict[str, int]]:
    """The blocks of a run written by one Ray task (`write_run`), returning their records: for a merge whose
    sources are all held, which has nothing to stream."""
    return list(write_run(run, fs, part_dir, kinds, *given))


def block_results(run: Run, kinds: list[str], *given: pa.Table) -> tuple[Any, ...]:
    """The one block of `run` for an object-store run: its serialised forms are returned (one result each, in
    `kinds` order) instead of stored as files, so later tasks upload them once. First result: (rows, Arrow
    bytes, JSON-lines bytes or 0), small enough for the driver to group blocks into upload parts."""
    ((_, table),) = gather(run, given)
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
