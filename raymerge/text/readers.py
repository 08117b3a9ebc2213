"""Reading one chunk of a source: the work of the counting pass and the gather, and of inspect and preview in
this process.

Unreadable content raises InvalidInput naming the file (and, for JSON, the line), so a bad input is refused
with a message, not a traceback from a task.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Iterable
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.errors import InvalidInput
from raymerge.text import codecs, finefoundry
from raymerge.text.sources import Chunk

LINE_TAIL = 64 << 10  # read past a chunk's end to finish its last line, in one request for most lines


def read_chunk(fs: AbstractFileSystem, chunk: Chunk, columns: list[str] | None = None) -> pa.Table:
    """The raw table of one chunk; unreadable content raises InvalidInput naming the file (and line)."""
    if chunk.compression is None:
        return _read_plain(fs, chunk, columns)
    try:
        return _read_plain(fs, chunk, columns)
    except InvalidInput:
        raise
    except Exception as e:  # each codec has its own error class (gzip.BadGzipFile, lzma.LZMAError, ZstdError...)
        where = storage.url(fs, chunk.path)
        raise InvalidInput(f"{where}: not readable {chunk.compression} data: {e}") from None


def _read_plain(fs: AbstractFileSystem, chunk: Chunk, columns: list[str] | None) -> pa.Table:
    where = storage.url(fs, chunk.path)
    try:
        if chunk.format == "parquet":
            return _read_row_groups(fs, chunk, columns)
        if chunk.format == "arrow":
            if storage.is_local(fs):
                with pa.memory_map(chunk.path) as m:
                    return pa.ipc.open_stream(m).read_all()
            with codecs.open_stream(fs, chunk.path, None, chunk.size) as f:
                return pa.ipc.open_stream(f).read_all()
        if chunk.format == "csv":
            return _read_csv(fs, chunk)
    except pa.ArrowInvalid as e:
        raise InvalidInput(f"{where}: not a readable {chunk.format} file: {e}") from None
    except OSError as e:
        if chunk.compression is not None:
            raise
        raise InvalidInput(f"{where}: not a readable {chunk.format} file: {e}") from None
    except UnicodeDecodeError:  # a CSV header that is not UTF-8 (its cells are checked by Arrow)
        raise InvalidInput(f"{where}: not a readable {chunk.format} file: its header is not UTF-8 text") from None
    if chunk.format == "jsonl":
        return _read_jsonl(fs, chunk, where)
    if chunk.format == "json":
        return _read_json_array(fs, chunk, where)
    if chunk.format == "sqlite":
        assert chunk.session_id is not None
        return finefoundry.read_pairs(
            finefoundry.local_sqlite(fs, chunk.path), chunk.session_id, chunk.start, chunk.stop
        )
    raise ValueError(f"unknown chunk format {chunk.format}")


def _read_row_groups(fs: AbstractFileSystem, chunk: Chunk, columns: list[str] | None) -> pa.Table:
    """A chunk's parquet row groups. Arrow's reader threads must not hold a Python file object: one they still
    hold when the interpreter exits aborts the process (apache/arrow#34314), which happens when this runs in
    the driver. So Arrow opens a local file itself, and a remote one is read on this thread."""
    groups = range(chunk.start, chunk.stop)
    if storage.is_local(fs):
        return pq.ParquetFile(chunk.path).read_row_groups(groups, columns=columns)
    with codecs.open_stream(fs, chunk.path, None, chunk.size) as f:
        return pq.ParquetFile(f, pre_buffer=False).read_row_groups(groups, columns=columns, use_threads=False)


def chunk_schema(fs: AbstractFileSystem, chunk: Chunk) -> pa.Schema | None:
    """The schema without reading rows, where the format allows it (parquet): a task then reads only the
    columns its mapping uses."""
    if chunk.format != "parquet":
        return None
    with codecs.open_stream(fs, chunk.path, None, chunk.size) as f:
        return pq.ParquetFile(f).schema_arrow


def count_rows(fs: AbstractFileSystem, chunk: Chunk) -> tuple[int, pa.Schema] | None:
    """A chunk's rows and schema from the format's own counts, reading no row: parquet row-group metadata in
    the footer, Arrow record-batch headers (a memory-mapped local file pages in only the headers), a SQLite
    count over the id range. None for formats that must be scanned."""
    where = storage.url(fs, chunk.path)
    try:
        if chunk.format == "parquet":
            with codecs.open_stream(fs, chunk.path, None, chunk.size) as f:
                pf = pq.ParquetFile(f)
                return sum(pf.metadata.row_group(g).num_rows for g in range(chunk.start, chunk.stop)), pf.schema_arrow
        if chunk.format == "arrow" and chunk.compression is None:
            with contextlib.ExitStack() as opened:
                if storage.is_local(fs):
                    stream: Any = opened.enter_context(pa.memory_map(chunk.path))
                else:
                    stream = opened.enter_context(codecs.open_stream(fs, chunk.path, None, chunk.size))
                reader = pa.ipc.open_stream(stream)
                return sum(batch.num_rows for batch in reader), reader.schema
    except (pa.ArrowInvalid, OSError) as e:
        raise InvalidInput(f"{where}: not a readable {chunk.format} file: {e}") from None
    if chunk.format == "sqlite":
        assert chunk.session_id is not None
        db = finefoundry.local_sqlite(fs, chunk.path)
        return finefoundry.count_pairs(db, chunk.session_id, chunk.start, chunk.stop), finefoundry.PAIRS_SCHEMA
    return None


def _read_csv(fs: AbstractFileSystem, chunk: Chunk) -> pa.Table:
    """Every value as text: the header is read first (one block), then the file streams through Arrow."""
    with codecs.open_stream(fs, chunk.path, chunk.compression, chunk.size, codecs.HEAD_BLOCK) as f:
        names = pacsv.open_csv(f, read_options=pacsv.ReadOptions(block_size=codecs.HEAD_BLOCK)).schema.names
    opts = pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()))
    with codecs.open_stream(fs, chunk.path, chunk.compression, chunk.size) as f:
        return pacsv.read_csv(f, convert_options=opts)


def _jsonl_bytes(fs: AbstractFileSystem, chunk: Chunk) -> bytes:
    """The whole lines that start inside [start, stop), by ranged reads: the chunk's bytes, the one before it (to
    tell where its first line starts) and the end of its last line, so chunks together read a file about once."""
    lo = max(chunk.start - 1, 0)
    data = _read_range(fs, chunk, lo, chunk.stop + LINE_TAIL)
    begin = 0
    if chunk.start > 0:  # the line that began before start belongs to the previous chunk
        nl = data.find(b"\n", 0, chunk.stop - lo)
        if nl < 0:
            return b""
        begin = nl + 1
    end = chunk.stop - lo
    if begin >= end:
        return b""
    step = LINE_TAIL
    while (nl := data.find(b"\n", end - 1)) < 0 and len(data) == chunk.stop + step - lo:
        more = _read_range(fs, chunk, lo + len(data), lo + len(data) + 2 * step)  # a line longer than the tail
        data, step = data + more, 3 * step
        if not more:
            break
    return data[begin : len(data) if nl < 0 else nl + 1]


def _read_range(fs: AbstractFileSystem, chunk: Chunk, start: int, stop: int) -> bytes:
    """Bytes [start, stop) of the chunk's file (fewer at its end): one ranged read."""
    if chunk.size is not None:
        stop = min(stop, chunk.size)
    if stop <= start:
        return b""
    return fs.cat_file(chunk.path, start=start, end=stop)


def _read_jsonl(fs: AbstractFileSystem, chunk: Chunk, where: str) -> pa.Table:
    if chunk.compression is not None:
        return _read_compressed_jsonl(fs, chunk, where)
    data = _jsonl_bytes(fs, chunk)
    if not data.strip():
        return pa.table({})
    try:
        return pajson.read_json(io.BytesIO(data), read_options=pajson.ReadOptions(block_size=8 << 20))
    except pa.ArrowInvalid:
        return _parse_lines(data.split(b"\n"), where, lambda: _lines_before(fs, chunk))


def _parse_lines(lines: Iterable[bytes], where: str, lines_before: Callable[[], int]) -> pa.Table:
    """JSON lines parsed one by one, after Arrow refused them: the error names the line at fault."""
    rows: list[object] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as bad:
            raise InvalidInput(f"{where}: line {lines_before() + i + 1}: not valid JSON: {bad}") from None
    return rows_table(rows, where)


def _read_compressed_jsonl(fs: AbstractFileSystem, chunk: Chunk, where: str) -> pa.Table:
    """Arrow parses the stream as it is decompressed; only a file Arrow refuses is read again, line by line, to
    name the line at fault."""
    try:
        with codecs.open_stream(fs, chunk.path, chunk.compression, chunk.size) as f:
            return pajson.read_json(f, read_options=pajson.ReadOptions(block_size=8 << 20))
    except pa.ArrowInvalid:
        pass
    with codecs.open_stream(fs, chunk.path, chunk.compression, chunk.size) as f:
        return _parse_lines(codecs.iter_lines(f), where, lambda: 0)


def _lines_before(fs: AbstractFileSystem, chunk: Chunk) -> int:
    """Lines of the file before the chunk's first line (only computed for error messages)."""
    if chunk.start == 0:
        return 0
    with codecs.open_stream(fs, chunk.path, None, chunk.size) as f:
        f.seek(chunk.start - 1)
        f.readline()
        begin = f.tell()
        f.seek(0)
        return f.read(begin).count(b"\n")


def _read_json_array(fs: AbstractFileSystem, chunk: Chunk, where: str) -> pa.Table:
    try:
        with codecs.open_stream(fs, chunk.path, chunk.compression, chunk.size) as f:
            rows = json.loads(f.read())
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
