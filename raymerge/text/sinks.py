"""Writing pairs: per-block parts made in parallel, then one ordered assembly per target.

Blocks serialise their rows once per part kind (JSON lines text, or Arrow for parquet and SQLite). On
local disk they are part files, and each target's assembler streams them in order into the one output
file, so no process ever holds all rows. On object storage they travel as the block tasks' results:
JSON-lines and JSON targets are uploaded as numbered parts of one multipart upload, each framed by its
own task (`json_piece`); the other targets are written from them by one task. JSON output is
FineFoundry's export: one array of {"input", "output"} objects, made from the JSON-lines bodies by byte
edits. A parquet file gets
row groups of a fixed size, so its bytes do not depend on how the output was cut into blocks.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.text import finefoundry
from raymerge.text.columns import PAIR_SCHEMA

PART_KIND = {
    "jsonl": "jsonl",
    "json": "jsonl",
    "parquet": "arrow",
    "sqlite": "arrow",
    "hf": "arrow",
    "save_to_disk": "arrow",
}
PARQUET_ROW_GROUP_ROWS = 131_072


def part_path(part_dir: str, kind: str, index: int) -> str:
    """Where block `index` leaves its part of one kind: names sort in block order."""
    return storage.join(part_dir, f"part-{index:06d}.{kind}")


def jsonl_bytes(table: pa.Table) -> bytes:
    """A block as JSON lines, the same bytes as its part file."""
    buf = io.BytesIO()
    pl.DataFrame(table).write_ndjson(buf)
    return buf.getvalue()


def write_parts(table: pa.Table, fs: AbstractFileSystem, part_dir: str, index: int, kinds: list[str]) -> None:
    """Serialise a block once per part kind, however many targets read that kind."""
    for kind in kinds:
        with fs.open(part_path(part_dir, kind, index), "wb") as f:
            if kind == "jsonl":
                f.write(jsonl_bytes(table))
            else:
                with pa.ipc.new_stream(f, table.schema) as w:
                    w.write_table(table)


def assemble(
    fmt: str, parts_fs: AbstractFileSystem, parts: list[str], out_fs: AbstractFileSystem, out_path: str, **target: Any
) -> None:
    """`write_file` from the ordered part files, streaming: no more than a part (JSON) or a row group (Arrow
    kinds) is in memory. `target`: `write_file`'s schema, session and existing_db."""
    if PART_KIND[fmt] == "jsonl":
        blocks: Iterable[Any] = (parts_fs.cat_file(p) for p in parts)
    else:
        blocks = iter_arrow_parts(parts_fs, parts)
    write_file(fmt, blocks, out_fs, out_path, **target)


def write_file(
    fmt: str,
    blocks: Iterable[Any],
    out_fs: AbstractFileSystem,
    out_path: str,
    schema: pa.Schema = PAIR_SCHEMA,
    session: finefoundry.SessionSpec | None = None,
    existing_db: str | None = None,
) -> None:
    """Write one target file from its rows in order: JSON-lines bodies for `jsonl`/`json`, record batches for
    the Arrow kinds; the same bytes whether they come from part files or from the blocks' own results."""
    if fmt == "sqlite":
        assert session is not None
        _assemble_sqlite(blocks, out_fs, out_path, session, existing_db)
        return
    with out_fs.open(out_path, "wb") as out:
        if fmt == "jsonl":
            for body in blocks:
                out.write(body)
        elif fmt == "json":
            out.write(json_piece(blocks, items_before=False, first=True, last=True))
        elif fmt == "parquet":
            write_parquet(blocks, out, schema)
        else:
            raise ValueError(f"unknown output format {fmt}")


def json_piece(bodies: Iterable[bytes], *, items_before: bool, first: bool, last: bool) -> bytes:
    """A run of consecutive blocks of FineFoundry's JSON array, from their JSON-lines bodies: the array is
    `[`, then `\n` before the first object and `,\n` before every other, then `\n]\n`. `items_before`: an
    earlier block held objects; `first`/`last`: the piece opens/closes the array. Pieces concatenate into the
    bytes one writer would make, so blocks may be framed by separate tasks."""
    out = [b"["] if first else []
    for body in bodies:
        # A JSON-lines object never holds a raw newline, so "\n" separates objects exactly.
        body = body.rstrip(b"\n")
        if not body:
            continue
        out += [b",\n" if items_before else b"\n", body.replace(b"\n", b",\n")]
        items_before = True
    if last:
        out.append(b"\n]\n")
    return b"".join(out)


def iter_arrow_parts(fs: AbstractFileSystem, parts: list[str]) -> Iterator[pa.RecordBatch]:
    """The rows of Arrow parts in order, a batch at a time, so a target never holds all of them."""
    for p in parts:
        with fs.open(p, "rb") as f:
            yield from pa.ipc.open_stream(f)


def fixed_row_groups(
    batches: Iterable[pa.RecordBatch], rows: int, schema: pa.Schema = PAIR_SCHEMA
) -> Iterator[pa.Table]:
    """The rows of `batches` regrouped into tables of exactly `rows` rows (the last may be shorter): blocks
    vary in size with the cores a run has, a file's row groups must not."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.Table.from_batches(pending, schema)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(pending, schema)


def write_parquet(batches: Iterable[pa.RecordBatch], out: BinaryIO, schema: pa.Schema) -> None:
    """Rows in row groups of a fixed size, so a file's bytes do not depend on how its rows were cut up; the
    schema's metadata (a whole-row merge's features) goes in the footer, where `datasets` reads it."""
    with pq.ParquetWriter(out, schema, compression="zstd") as w:
        for group in fixed_row_groups(batches, PARQUET_ROW_GROUP_ROWS, schema):
            w.write_table(group.combine_chunks(), row_group_size=PARQUET_ROW_GROUP_ROWS)


def _assemble_sqlite(
    batches: Iterable[pa.RecordBatch],
    out_fs: AbstractFileSystem,
    out_path: str,
    session: finefoundry.SessionSpec,
    existing_db: str | None,
) -> None:
    """A copy of the existing database (if any) gains the session in one transaction. SQLite needs a local
    file: for an object-store target the database is built in a temporary file (an existing one downloaded
    first) and uploaded whole, once."""
    local = storage.is_local(out_fs)
    work = out_path if local else tempfile.mkstemp(suffix=".db")[1]
    try:
        if existing_db is not None:
            shutil.copyfile(finefoundry.local_sqlite(out_fs, existing_db), work)
        elif not local:
            os.unlink(work)
        finefoundry.write_session(work, session, batches)
        if not local:
            out_fs.put(work, out_path)
    finally:
        if not local:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(work)
