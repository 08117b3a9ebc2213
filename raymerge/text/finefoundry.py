"""FineFoundry databases: SQLite files of scrape sessions, each a list of input/output pairs.

A source reads one session; a target gains one session. SQLite needs a local file, so a database on
object storage is read through a cached local copy and written as a local file that is then uploaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.errors import InvalidInput

SQLITE_MAGIC = b"SQLite format 3\x00"
SESSION_ID_RANGE_OPEN_END = 2**62  # the last id range of a session reaches every later id
PAIRS_SCHEMA = pa.schema([("input", pa.string()), ("output", pa.string())])  # what `read_pairs` returns

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


# -- reading -------------------------------------------------------------------------------
def local_sqlite(fs: AbstractFileSystem, path: str) -> str:
    """A local file path for a database, which SQLite needs: itself, or a cached copy of a remote one."""
    if storage.is_local(fs):
        return path
    info = fs.info(path)
    tag = f"{storage.url(fs, path)}|{info.get('ETag') or info.get('mtime') or ''}|{info.get('size')}"
    cache = os.path.join(tempfile.gettempdir(), "raymerge-sqlite")
    os.makedirs(cache, exist_ok=True)
    local = os.path.join(cache, hashlib.sha256(tag.encode()).hexdigest()[:24] + ".db")
    if not os.path.exists(local):
        tmp = f"{local}.{os.getpid()}.part"
        fs.get(path, tmp)
        os.replace(tmp, local)
    return local


@contextlib.contextmanager
def read_only(db_path: str) -> Iterator[sqlite3.Connection]:
    """A connection that cannot change the database: inputs are never written."""
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        yield con
    finally:
        con.close()


def list_sessions(db_path: str, where: str) -> list[dict[str, Any]]:
    """Every session with what tells it apart (FineFoundry's scrapers leave names empty): id, name, source,
    source details, creation time and the pairs it really holds."""
    try:
        with read_only(db_path) as con:
            rows = con.execute(
                "SELECT s.id, s.name, s.source, s.source_details, s.created_at, "
                "(SELECT COUNT(*) FROM scraped_pairs p WHERE p.session_id = s.id) "
                "FROM scrape_sessions s ORDER BY s.id"
            ).fetchall()
    except sqlite3.DatabaseError as e:
        # "locked": another program held a write lock for longer than sqlite's busy timeout.
        problem = (
            "database is locked by another program; retry when it is done"
            if "locked" in str(e)
            else f"not a FineFoundry database (scrape_sessions/scraped_pairs): {e}"
        )
        raise InvalidInput(f"{where}: {problem}") from None
    keys = ("id", "name", "source", "source_details", "created_at", "pairs")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def describe_session(s: dict[str, Any]) -> str:
    """One session in a line: `3: 'name' (reddit, r/python, created 2024-05-01 10:00:00, 99 pairs)`; an unnamed
    one by its source and time, which is how FineFoundry itself lists them."""
    label = repr(s["name"]) if s.get("name") else "unnamed"
    facts = [str(s[k]) for k in ("source", "source_details") if s.get(k)]
    if s.get("created_at"):
        facts.append(f"created {s['created_at']}")
    facts.append(f"{s['pairs']} pairs")
    return f"{s['id']}: {label} ({', '.join(facts)})"


def describe_sessions(sessions: list[dict[str, Any]]) -> str:
    return "; ".join(describe_session(s) for s in sessions) or "none"


def find_session(sessions: list[dict[str, Any]], session: str | int | None, where: str) -> dict[str, Any]:
    """The session a config names: a number is an id, a string a name; a name used twice must be given by id."""
    if session is None:
        if len(sessions) == 1:
            return sessions[0]
        raise InvalidInput(
            f"{where}: choose a session with session: ID (or a name); sessions: {describe_sessions(sessions)}"
        )
    if isinstance(session, int) and not isinstance(session, bool):
        for s in sessions:
            if s["id"] == session:
                return s
        raise InvalidInput(f"{where}: no session with id {session}; sessions: {describe_sessions(sessions)}")
    by_name = [s for s in sessions if s["name"] == session]
    if len(by_name) > 1:
        raise InvalidInput(
            f"{where}: {len(by_name)} sessions are named {session!r}; choose one with session: ID: "
            f"{describe_sessions(by_name)}"
        )
    if by_name:
        return by_name[0]
    hint = ""
    if str(session).strip().isdigit() and any(s["id"] == int(session) for s in sessions):
        hint = f" (to choose by id, write session: {int(session)} as a number, or session: {{id: {int(session)}}})"
    raise InvalidInput(f"{where}: no session named {session!r}{hint}; sessions: {describe_sessions(sessions)}")


def session_id_ranges(db_path: str, session_id: int, pairs_per_range: int) -> list[tuple[int, int]]:
    """Inclusive pair-id ranges of `pairs_per_range` pairs each, so that each read task takes one range."""
    with read_only(db_path) as con:
        bounds = [
            r[0]
            for r in con.execute(
                "SELECT id FROM (SELECT id, ROW_NUMBER() OVER (ORDER BY id) - 1 AS k "
                "FROM scraped_pairs WHERE session_id = ?) WHERE k % ? = 0 ORDER BY id",
                (session_id, pairs_per_range),
            )
        ]
    stops = [b - 1 for b in bounds[1:]] + [SESSION_ID_RANGE_OPEN_END]
    return list(zip(bounds, stops, strict=True))


def read_pairs(db_path: str, session_id: int, first_id: int, last_id: int) -> pa.Table:
    """One id range of a session's pairs, in id order (the order FineFoundry shows them in)."""
    with read_only(db_path) as con:
        rows = con.execute(
            "SELECT input_text, output_text FROM scraped_pairs WHERE session_id = ? AND id BETWEEN ? AND ? ORDER BY id",
            (session_id, first_id, last_id),
        ).fetchall()
    inputs, outputs = zip(*rows, strict=True) if rows else ((), ())
    return pa.Table.from_arrays([pa.array(inputs, pa.string()), pa.array(outputs, pa.string())], schema=PAIRS_SCHEMA)


def count_pairs(db_path: str, session_id: int, first_id: int, last_id: int) -> int:
    """How many pairs `read_pairs` would return, counted by SQLite without reading one."""
    with read_only(db_path) as con:
        (n,) = con.execute(
            "SELECT count(*) FROM scraped_pairs WHERE session_id = ? AND id BETWEEN ? AND ?",
            (session_id, first_id, last_id),
        ).fetchone()
    return int(n)


# -- writing -------------------------------------------------------------------------------
def session_conflict(db_path: str, name: str) -> list[int]:
    """Ids of sessions already named `name` (none if the file has no tables): a run must not add a second."""
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return [r[0] for r in con.execute("SELECT id FROM scrape_sessions WHERE name = ?", (name,))]
    except sqlite3.OperationalError:
        return []
    except sqlite3.DatabaseError as e:
        raise InvalidInput(f"{db_path}: not a SQLite database: {e}") from None
    finally:
        con.close()


def write_session(db_path: str, session: SessionSpec, batches: Iterable[pa.RecordBatch]) -> int:
    """Add one session with its pairs in merged order, in one transaction so a failure leaves no part of it;
    returns its id."""
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
        assert sid is not None  # an INSERT always sets it
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
        return sid
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            con.execute("ROLLBACK")
        raise
    finally:
        con.close()
