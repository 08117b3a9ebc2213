"""Writing pairs: per-block parts written in parallel, then one ordered assembly per target.

Blocks serialise their rows once per part kind (JSON lines text, or Arrow IPC for parquet and
SQLite); each target's assembler streams the parts in order into the one output file, so no
process ever holds all rows. JSON output is FineFoundry's export: one array of
{"input", "output"} objects, made from the JSON-lines parts by byte edits.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.errors import InvalidInput

PART_KIND = {"jsonl": "jsonl", "json": "jsonl", "parquet": "arrow", "sqlite": "arrow"}
COPY_BUFFER = 8 << 20

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS scrape_sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT,
    source TEXT NOT NULL,
    source_details TEXT,
    dataset_format TEXT DEFAULT 'standard',
    pair_count INTEGER DEFAULT 0,
    created_at TEXT DEFAULT (datetime('now')),
    metadata_json TEXT
);
CREATE TABLE IF NOT EXISTS scraped_pairs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id INTEGER NOT NULL REFERENCES scrape_sessions(id) ON DELETE CASCADE,
    input_text TEXT NOT NULL,
    output_text TEXT NOT NULL,
    source_url TEXT,
    metadata_json TEXT,
    created_at TEXT DEFAULT (datetime('now'))
);
CREATE INDEX IF NOT EXISTS idx_scraped_pairs_session ON scraped_pairs(session_id);
"""


@dataclass(frozen=True)
class SessionSpec:
    """The session a SQLite target gains; `replace` drops an existing session of that name first."""

    name: str
    operation: str
    source_count: int
    replace: bool


def part_path(part_dir: str, kind: str, index: int) -> str:
    return storage.join(part_dir, f"part-{index:06d}.{kind}")


def write_parts(table: pa.Table, fs: AbstractFileSystem, part_dir: str, index: int, kinds: list[str]) -> None:
    for kind in kinds:
        with fs.open(part_path(part_dir, kind, index), "wb") as f:
            if kind == "jsonl":
                pl.from_arrow(table).write_ndjson(f)
            else:
                with pa.ipc.new_stream(f, table.schema) as w:
                    w.write_table(table)


def assemble(
    fmt: str,
    parts_fs: AbstractFileSystem,
    parts: list[str],
    out_fs: AbstractFileSystem,
    out_path: str,
    session: SessionSpec | None = None,
    existing_db: str | None = None,
) -> None:
    """Write one target file from the ordered parts."""
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
            _write_parquet(parts_fs, parts, out)
        else:
            raise ValueError(f"unknown output format {fmt}")


def _write_json_array(fs: AbstractFileSystem, parts: list[str], out: io.RawIOBase) -> None:
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


def iter_arrow_parts(fs: AbstractFileSystem, parts: list[str]):
    for p in parts:
        with fs.open(p, "rb") as f:
            yield from pa.ipc.open_stream(f)


def _write_parquet(fs: AbstractFileSystem, parts: list[str], out: io.RawIOBase) -> None:
    from raymerge.text.columns import PAIR_SCHEMA

    with pq.ParquetWriter(out, PAIR_SCHEMA, compression="zstd") as w:
        for batch in iter_arrow_parts(fs, parts):
            w.write_batch(batch)


# -- FineFoundry databases ------------------------------------------------------------------
def session_conflict(db_path: str, name: str) -> list[int]:
    """Ids of sessions already named `name` in a local database file (none if it has no tables)."""
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return [r[0] for r in con.execute("SELECT id FROM scrape_sessions WHERE name = ?", (name,))]
    except sqlite3.OperationalError:
        return []
    except sqlite3.DatabaseError as e:
        raise InvalidInput(f"{db_path}: not a SQLite database: {e}") from None
    finally:
        con.close()


def _assemble_sqlite(
    parts_fs: AbstractFileSystem,
    parts: list[str],
    out_fs: AbstractFileSystem,
    out_path: str,
    session: SessionSpec,
    existing_db: str | None,
) -> None:
    """A copy of the existing database (if any) gains the session in one transaction."""
    local = storage.is_local(out_fs)
    work = out_path if local else tempfile.mkstemp(suffix=".db")[1]
    try:
        if existing_db is not None:
            from raymerge.text.sources import local_sqlite

            shutil.copyfile(local_sqlite(out_fs, existing_db), work)
        elif not local:
            os.unlink(work)
        write_session(work, session, iter_arrow_parts(parts_fs, parts))
        if not local:
            out_fs.put(work, out_path)
    finally:
        if not local:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(work)


def write_session(db_path: str, session: SessionSpec, batches) -> int:
    """Add one session with its pairs in merged order; returns its id."""
    con = sqlite3.connect(db_path, isolation_level=None)
    try:
        con.executescript(SCHEMA_SQL)
        con.execute("BEGIN")
        if session.replace:
            old = [r[0] for r in con.execute("SELECT id FROM scrape_sessions WHERE name = ?", (session.name,))]
            con.executemany("DELETE FROM scraped_pairs WHERE session_id = ?", [(i,) for i in old])
            con.executemany("DELETE FROM scrape_sessions WHERE id = ?", [(i,) for i in old])
        meta = json.dumps({"operation": session.operation, "source_count": session.source_count})
        sid = con.execute(
            "INSERT INTO scrape_sessions (name, source, source_details, metadata_json) VALUES (?, 'Merged', ?, ?)",
            (session.name, session.name, meta),
        ).lastrowid
        count = 0
        for batch in batches:
            n = batch.num_rows
            con.executemany(
                "INSERT INTO scraped_pairs (session_id, input_text, output_text) VALUES (?, ?, ?)",
                zip([sid] * n, batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True),
            )
            count += n
        con.execute("UPDATE scrape_sessions SET pair_count = ? WHERE id = ?", (count, sid))
        con.execute("COMMIT")
        return int(sid)
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            con.execute("ROLLBACK")
        raise
    finally:
        con.close()
