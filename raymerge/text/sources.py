"""Where text rows come from: format detection, read chunks, and the readers for each chunk.

The driver only lists files and reads footers/headers to cut a source into `Chunk`s (plain
values); tasks read the chunks. Hugging Face folders (hub snapshots, the hub cache,
`save_to_disk`) resolve to their data files; a FineFoundry database resolves to one session.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
import yaml
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.errors import InvalidInput

FILE_FORMATS = {
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".arrow": "arrow",
    ".db": "sqlite",
    ".sqlite": "sqlite",
    ".sqlite3": "sqlite",
}
SQLITE_MAGIC = b"SQLite format 3\x00"
SPLIT_WORDS = {
    "train": {"train", "training"},
    "validation": {"validation", "valid", "dev", "val"},
    "test": {"test", "testing", "eval"},
}
CHUNK_ROWS = 131_072  # parquet row groups / SQLite ids per read task
CHUNK_BYTES = 32 << 20  # JSONL bytes per read task


@dataclass(frozen=True)
class Chunk:
    """One read task's share of a source. Ranges: parquet row groups, JSONL bytes, SQLite ids."""

    format: str
    path: str
    start: int = 0
    stop: int = -1
    session_id: int | None = None


@dataclass
class Source:
    """A resolved input: its filesystem, what it is, and its chunks (metadata only)."""

    url: str
    fs: AbstractFileSystem
    kind: str
    chunks: list[Chunk] = field(default_factory=list)
    details: dict = field(default_factory=dict)


# -- resolving ------------------------------------------------------------------------------
def open_source(
    fs: AbstractFileSystem,
    path: str,
    fmt: str = "auto",
    split: str | None = None,
    config: str | None = None,
    session: str | int | None = None,
) -> Source:
    where = storage.url(fs, path)
    if not storage.exists(fs, path):
        raise InvalidInput(f"{where}: no such file or folder")
    if fs.isdir(path):
        return _open_folder(fs, path, fmt, split, config)
    fmt = file_format(fs, path) if fmt in ("auto", "hf", "save_to_disk") else fmt
    if fmt == "sqlite":
        return _open_sqlite(fs, path, session)
    if session is not None:
        raise InvalidInput(f"{where}: session is only for FineFoundry databases, and this is a {fmt} file")
    return Source(where, fs, fmt, _file_chunks(fs, [path], fmt))


def file_format(fs: AbstractFileSystem, path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    with fs.open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(SQLITE_MAGIC):
        return "sqlite"
    fmt = FILE_FORMATS.get(ext)
    if fmt is None:
        raise InvalidInput(
            f"{storage.url(fs, path)}: unknown file type {ext or '(no extension)'}; "
            f"expected one of {', '.join(sorted(FILE_FORMATS))} or set format"
        )
    if fmt == "json" and head.lstrip()[:1] == b"{":
        return "jsonl"  # one object per line, despite the .json name
    return fmt


def _open_folder(fs: AbstractFileSystem, path: str, fmt: str, split: str | None, config: str | None) -> Source:
    where = storage.url(fs, path)
    if storage.exists(fs, storage.join(path, "refs", "main")):
        sha = fs.cat_file(storage.join(path, "refs", "main")).decode().strip()
        snap = storage.join(path, "snapshots", sha)
        if not storage.exists(fs, snap):
            raise InvalidInput(f"{where}: refs/main points to {sha}, but snapshots/{sha} is missing")
        src = _open_folder(fs, snap, fmt, split, config)
        src.details["revision"] = sha
        return src
    if storage.exists(fs, storage.join(path, "dataset_dict.json")):
        splits = json.loads(fs.cat_file(storage.join(path, "dataset_dict.json")))["splits"]
        chosen = choose_split(list(splits), split, where)
        src = _open_folder(fs, storage.join(path, chosen), fmt, None, config)
        src.details.update(split=chosen, splits=list(splits))
        return src
    if storage.exists(fs, storage.join(path, "state.json")):
        state = json.loads(fs.cat_file(storage.join(path, "state.json")))
        files = [storage.join(path, f["filename"]) for f in state.get("_data_files", [])]
        return Source(where, fs, "save_to_disk", _file_chunks(fs, files, "arrow"))
    files, details = hub_files(fs, path, split, config)
    formats = {FILE_FORMATS[os.path.splitext(f)[1].lower()] for f in files}
    if len(formats) > 1:
        raise InvalidInput(f"{where}: split mixes file formats {sorted(formats)}")
    fmt = formats.pop()
    if fmt == "json":
        fmt = file_format(fs, files[0])
        if fmt == "sqlite":
            raise InvalidInput(f"{storage.url(fs, files[0])}: a SQLite database named .json; expected JSON text")
    return Source(where, fs, "hf", _file_chunks(fs, files, fmt), details)


def choose_split(splits: list[str], split: str | None, where: str) -> str:
    if split is not None:
        if split not in splits:
            raise InvalidInput(f"{where}: no split {split!r}; splits found: {', '.join(splits)}")
        return split
    if "train" in splits:
        return "train"
    if len(splits) == 1:
        return splits[0]
    raise InvalidInput(f"{where}: several splits ({', '.join(splits)}); choose one with split")


def readme_configs(fs: AbstractFileSystem, root: str) -> list[dict]:
    """The `configs:` list of a hub README's YAML header, or []."""
    readme = storage.join(root, "README.md")
    if not storage.exists(fs, readme):
        return []
    text = fs.cat_file(readme).decode("utf-8", "replace")
    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if not m:
        return []
    try:
        header = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError as e:
        raise InvalidInput(f"{storage.url(fs, readme)}: the YAML header is not valid: {e}") from None
    configs = header.get("configs") if isinstance(header, dict) else None
    return configs if isinstance(configs, list) else []


def _config_splits(entry: dict) -> dict[str, list[str]]:
    data = entry.get("data_files", [])
    if isinstance(data, str):
        return {"train": [data]}
    out: dict[str, list[str]] = {}
    for item in data:
        if isinstance(item, str):
            out.setdefault("train", []).append(item)
        else:
            paths = item["path"] if isinstance(item["path"], list) else [item["path"]]
            out.setdefault(item.get("split", "train"), []).extend(paths)
    return out


def hub_files(fs: AbstractFileSystem, root: str, split: str | None, config: str | None) -> tuple[list[str], dict]:
    """The data files of one config and split of a hub snapshot folder, as HF would choose them."""
    where = storage.url(fs, root)
    configs = readme_configs(fs, root)
    if configs:
        names = [c.get("config_name", "default") for c in configs]
        if config is None:
            defaults = [c for c in configs if c.get("default")] or [
                c for c in configs if c.get("config_name", "default") == "default"
            ]
            if not defaults and len(configs) > 1:
                raise InvalidInput(f"{where}: several configs ({', '.join(names)}); choose one with config")
            entry = (defaults or configs)[0]
        elif config in names:
            entry = configs[names.index(config)]
        else:
            raise InvalidInput(f"{where}: no config {config!r}; configs found: {', '.join(names)}")
        splits = _config_splits(entry)
        chosen = choose_split(list(splits), split, where)
        files = sorted({f for pattern in splits[chosen] for f in fs.glob(storage.join(root, pattern))})
        details = {"config": entry.get("config_name", "default"), "split": chosen, "splits": list(splits)}
    else:
        base = storage.join(root, config) if config else root
        if config and not fs.isdir(base):
            raise InvalidInput(f"{where}: no config folder {config!r}")
        if not config and fs.isdir(storage.join(root, "data")):
            base = storage.join(root, "data")
        found = [f for f in sorted(fs.find(base)) if _is_data_file(f[len(root) :])]
        by_split: dict[str, list[str]] = {}
        for f in found:
            by_split.setdefault(guess_split(f[len(root) :]), []).append(f)
        if not by_split:
            raise InvalidInput(
                f"{where}: no data files ({', '.join(sorted(FILE_FORMATS))}) and no README configs; not a dataset folder"
            )
        chosen = choose_split(list(by_split), split, where)
        files = by_split[chosen]
        details = {"split": chosen, "splits": list(by_split)}
    if not files:
        raise InvalidInput(f"{where}: split {details['split']!r} lists no files that exist")
    return files, details


def _is_data_file(relative: str) -> bool:
    parts = relative.strip("/").split("/")
    if any(p.startswith(".") for p in parts):
        return False
    ext = os.path.splitext(parts[-1])[1].lower()
    return ext in FILE_FORMATS and FILE_FORMATS[ext] != "sqlite"


def guess_split(relative: str) -> str:
    """HF's split guessing from file/folder names; files naming no split are train."""
    tokens = set(re.split(r"[-_./\s]+", relative.lower()))
    for name, words in SPLIT_WORDS.items():
        if tokens & words:
            return name
    return "train"


def _file_chunks(fs: AbstractFileSystem, files: list[str], fmt: str) -> list[Chunk]:
    chunks: list[Chunk] = []
    for f in files:
        if fmt == "parquet":
            try:
                with fs.open(f, "rb") as fh:
                    meta = pq.ParquetFile(fh).metadata
            except (pa.ArrowInvalid, OSError) as e:
                raise InvalidInput(f"{storage.url(fs, f)}: not a readable parquet file: {e}") from None
            start, rows = 0, 0
            for g in range(meta.num_row_groups):
                rows += meta.row_group(g).num_rows
                if rows >= CHUNK_ROWS:
                    chunks.append(Chunk(fmt, f, start, g + 1))
                    start, rows = g + 1, 0
            if start < meta.num_row_groups or not chunks or chunks[-1].path != f:
                chunks.append(Chunk(fmt, f, start, meta.num_row_groups))
        elif fmt == "jsonl":
            size = int(fs.info(f)["size"])
            chunks += [Chunk(fmt, f, s, min(s + CHUNK_BYTES, size)) for s in range(0, max(size, 1), CHUNK_BYTES)]
        else:
            chunks.append(Chunk(fmt, f))
    return chunks


# -- FineFoundry databases ------------------------------------------------------------------
def local_sqlite(fs: AbstractFileSystem, path: str) -> str:
    """A local file path for a database: itself, or a cached copy of a remote one."""
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
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        yield con
    finally:
        con.close()


def list_sessions(db_path: str, where: str) -> list[dict]:
    try:
        with read_only(db_path) as con:
            rows = con.execute(
                "SELECT s.id, s.name, s.source, s.created_at, "
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
    return [{"id": r[0], "name": r[1], "source": r[2], "created_at": r[3], "pairs": r[4]} for r in rows]


def _describe_sessions(sessions: list[dict]) -> str:
    return ", ".join(f"{s['id']}: {s['name']!r} ({s['pairs']} pairs)" for s in sessions) or "none"


def find_session(sessions: list[dict], session: str | int | None, where: str) -> dict:
    if session is None:
        if len(sessions) == 1:
            return sessions[0]
        raise InvalidInput(f"{where}: choose a session (name or id); sessions: {_describe_sessions(sessions)}")
    by_name = [s for s in sessions if s["name"] == session]
    if len(by_name) > 1:
        raise InvalidInput(f"{where}: session name {session!r} is used by ids {[s['id'] for s in by_name]}; use the id")
    if by_name:
        return by_name[0]
    as_id = int(session) if isinstance(session, int) or str(session).isdigit() else None
    for s in sessions:
        if s["id"] == as_id:
            return s
    raise InvalidInput(f"{where}: no session {session!r}; sessions: {_describe_sessions(sessions)}")


def _open_sqlite(fs: AbstractFileSystem, path: str, session: str | int | None) -> Source:
    where = storage.url(fs, path)
    db = local_sqlite(fs, path)
    chosen = find_session(list_sessions(db, where), session, where)
    with read_only(db) as con:
        # Ids at every CHUNK_ROWS-th pair of the session: each read task takes one id range.
        bounds = [
            r[0]
            for r in con.execute(
                "SELECT id FROM (SELECT id, ROW_NUMBER() OVER (ORDER BY id) - 1 AS k "
                "FROM scraped_pairs WHERE session_id = ?) WHERE k % ? = 0 ORDER BY id",
                (chosen["id"], CHUNK_ROWS),
            )
        ]
    stops = [b - 1 for b in bounds[1:]] + [2**62]
    chunks = [Chunk("sqlite", path, b, s, chosen["id"]) for b, s in zip(bounds, stops, strict=True)]
    return Source(where, fs, "sqlite", chunks, {"session": {k: chosen[k] for k in ("id", "name")}})


# -- reading chunks (in tasks) -------------------------------------------------------------
def read_chunk(fs: AbstractFileSystem, chunk: Chunk, columns: list[str] | None = None) -> pa.Table:
    """The raw table of one chunk; unreadable content raises InvalidInput naming the file (and line)."""
    where = storage.url(fs, chunk.path)
    try:
        if chunk.format == "parquet":
            with fs.open(chunk.path, "rb") as f:
                return pq.ParquetFile(f).read_row_groups(range(chunk.start, chunk.stop), columns=columns)
        if chunk.format == "arrow":
            if storage.is_local(fs):
                with pa.memory_map(chunk.path) as m:
                    return pa.ipc.open_stream(m).read_all()
            with fs.open(chunk.path, "rb") as f:
                return pa.ipc.open_stream(f).read_all()
        if chunk.format == "csv":
            with fs.open(chunk.path, "rb") as f:
                data = f.read()
            names = pacsv.open_csv(io.BytesIO(data)).schema.names
            opts = pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()))
            return pacsv.read_csv(io.BytesIO(data), convert_options=opts)
    except (pa.ArrowInvalid, OSError) as e:
        raise InvalidInput(f"{where}: not a readable {chunk.format} file: {e}") from None
    except UnicodeDecodeError:  # a CSV header that is not UTF-8 (its cells are checked by Arrow)
        raise InvalidInput(f"{where}: not a readable {chunk.format} file: its header is not UTF-8 text") from None
    if chunk.format == "jsonl":
        return _read_jsonl(fs, chunk, where)
    if chunk.format == "json":
        return _read_json_array(fs, chunk.path, where)
    if chunk.format == "sqlite":
        return _read_session(fs, chunk)
    raise ValueError(f"unknown chunk format {chunk.format}")


def chunk_schema(fs: AbstractFileSystem, chunk: Chunk) -> pa.Schema | None:
    """The schema without reading rows, where the format allows it (parquet)."""
    if chunk.format != "parquet":
        return None
    with fs.open(chunk.path, "rb") as f:
        return pq.ParquetFile(f).schema_arrow


def _jsonl_bytes(fs: AbstractFileSystem, chunk: Chunk) -> bytes:
    """The whole lines that start inside [start, stop)."""
    with fs.open(chunk.path, "rb") as f:
        if chunk.start > 0:
            f.seek(chunk.start - 1)
            f.readline()  # the line that began before start belongs to the previous chunk
        begin = f.tell()
        if begin >= chunk.stop:
            return b""
        data = f.read(chunk.stop - begin)
        if not data.endswith(b"\n"):
            data += f.readline()
    return data


def _read_jsonl(fs: AbstractFileSystem, chunk: Chunk, where: str) -> pa.Table:
    data = _jsonl_bytes(fs, chunk)
    if not data.strip():
        return pa.table({})
    try:
        return pajson.read_json(io.BytesIO(data), read_options=pajson.ReadOptions(block_size=8 << 20))
    except pa.ArrowInvalid:
        rows = []
        for i, line in enumerate(data.split(b"\n")):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as bad:
                raise InvalidInput(f"{where}: line {_lines_before(fs, chunk) + i + 1}: not valid JSON: {bad}") from None
        return rows_table(rows, where)


def _lines_before(fs: AbstractFileSystem, chunk: Chunk) -> int:
    """Lines of the file before the chunk's first line (only computed for error messages)."""
    if chunk.start == 0:
        return 0
    with fs.open(chunk.path, "rb") as f:
        f.seek(chunk.start - 1)
        f.readline()
        begin = f.tell()
        f.seek(0)
        return f.read(begin).count(b"\n")


def _read_json_array(fs: AbstractFileSystem, path: str, where: str) -> pa.Table:
    try:
        rows = json.loads(fs.cat_file(path))
    except json.JSONDecodeError as e:
        raise InvalidInput(f"{where}: line {e.lineno} column {e.colno}: not valid JSON: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise InvalidInput(f"{where}: not valid JSON: not UTF-8 text at byte {e.start}") from None
    if isinstance(rows, dict) and len(rows) == 1 and isinstance(next(iter(rows.values())), list):
        rows = next(iter(rows.values()))  # {"data": [...]} style wrappers
    return rows_table(rows, where)


def rows_table(rows: object, where: str) -> pa.Table:
    """A table from parsed JSON objects; mixed value types in a column are kept as their JSON text."""
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InvalidInput(f"{where}: expected a JSON array of objects (or one object per line)")
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        keys = list(dict.fromkeys(k for r in rows for k in r))
        return pa.table({k: pa.array([_as_text(r.get(k)) for r in rows], pa.string()) for k in keys})


def _as_text(v: object) -> str | None:
    if v is None or isinstance(v, str):
        return v
    return json.dumps(v, ensure_ascii=False)


def _read_session(fs: AbstractFileSystem, chunk: Chunk) -> pa.Table:
    with read_only(local_sqlite(fs, chunk.path)) as con:
        rows = con.execute(
            "SELECT input_text, output_text FROM scraped_pairs WHERE session_id = ? AND id BETWEEN ? AND ? ORDER BY id",
            (chunk.session_id, chunk.start, chunk.stop),
        ).fetchall()
    inputs, outputs = zip(*rows, strict=True) if rows else ((), ())
    return pa.table({"input": pa.array(inputs, pa.string()), "output": pa.array(outputs, pa.string())})
