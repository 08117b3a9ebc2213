"""Writing pairs: per-block parts written in parallel, then one ordered assembly per target.

Blocks serialise their rows once per part kind (JSON lines text, or Arrow IPC for parquet and
SQLite); each target's assembler streams the parts in order into the one output file, so no
process ever holds all rows. JSON output is FineFoundry's export: one array of
{"input", "output"} objects, made from the JSON-lines parts by byte edits. A parquet file gets
row groups of a fixed size, so its bytes do not depend on how the output was cut into blocks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from typing import BinaryIO

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
COPY_BUFFER = 8 << 20
PARQUET_ROW_GROUP_ROWS = 131_072


def part_path(part_dir: str, kind: str, index: int) -> str:
    """Where block `index` leaves its part of one kind: names sort in block order."""
    return storage.join(part_dir, f"part-{index:06d}.{kind}")


def write_parts(table: pa.Table, fs: AbstractFileSystem, part_dir: str, index: int, kinds: list[str]) -> None:
    """Serialise a block once per part kind, however many targets read that kind."""
    for kind in kinds:
        with fs.open(part_path(part_dir, kind, index), "wb") as f:
            if kind == "jsonl":
                pl.DataFrame(table).write_ndjson(f)
            else:
                with pa.ipc.new_stream(f, table.schema) as w:
                    w.write_table(table)


def assemble(
    fmt: str,
    parts_fs: AbstractFileSystem,
    parts: list[str],
    out_fs: AbstractFileSystem,
    out_path: str,
    schema: pa.Schema = PAIR_SCHEMA,
    session: finefoundry.SessionSpec | None = None,
    existing_db: str | None = None,
) -> None:
    """Write one target file from the ordered parts (rows in `schema`), streaming: no more than a row group is
    in memory."""
    if fmt == "sqlite":
        assert session is not None
        _assemble_sqlite(parts_fs, parts, out_fs, out_path, session, existing_db)
        return
    with out_fs.open(out_path, "wb") as out:
        if fmt == "jsonl":
            for p in parts:
                with parts_fs.open(p, "rb") as f:
                    shutil.copyfileobj(f, out, COPY_BUFFER)
        elif fmt == "json":
            _write_json_array(parts_fs, parts, out)
        elif fmt == "parquet":
            _write_parquet(parts_fs, parts, out, schema)
        else:
            raise ValueError(f"unknown output format {fmt}")


def _write_json_array(fs: AbstractFileSystem, parts: list[str], out: BinaryIO) -> None:
    # A JSON-lines object never holds a raw newline, so "\n" separates objects exactly.
    out.write(b"[")
    first = True
    for p in parts:
        body = fs.cat_file(p).rstrip(b"\n")
        if not body:
            continue
        out.write(b"\n" if first else b",\n")
        out.write(body.replace(b"\n", b",\n"))
        first = False
    out.write(b"\n]\n")


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


def _write_parquet(fs: AbstractFileSystem, parts: list[str], out: BinaryIO, schema: pa.Schema) -> None:
    write_parquet(iter_arrow_parts(fs, parts), out, schema)


def write_parquet(batches: Iterable[pa.RecordBatch], out: BinaryIO, schema: pa.Schema) -> None:
    """Rows in row groups of a fixed size, so a file's bytes do not depend on how its rows were cut up; the
    schema's metadata (a whole-row merge's features) goes in the footer, where `datasets` reads it."""
    with pq.ParquetWriter(out, schema, compression="zstd") as w:
        for group in fixed_row_groups(batches, PARQUET_ROW_GROUP_ROWS, schema):
            w.write_table(group, row_group_size=PARQUET_ROW_GROUP_ROWS)


def _assemble_sqlite(
    parts_fs: AbstractFileSystem,
    parts: list[str],
    out_fs: AbstractFileSystem,
    out_path: str,
    session: finefoundry.SessionSpec,
    existing_db: str | None,
) -> None:
    """A copy of the existing database (if any) gains the session in one transaction."""
    local = storage.is_local(out_fs)
    work = out_path if local else tempfile.mkstemp(suffix=".db")[1]
    try:
        if existing_db is not None:
            shutil.copyfile(finefoundry.local_sqlite(out_fs, existing_db), work)
        elif not local:
            os.unlink(work)
        finefoundry.write_session(work, session, iter_arrow_parts(parts_fs, parts))
        if not local:
            out_fs.put(work, out_path)
    finally:
        if not local:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(work)
