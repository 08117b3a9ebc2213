"""Text sources as Ray Datasets, FineFoundry sessions written from one, and the Ray Data stage of a text merge.

The only module of the family that imports Ray: a `raymerge run` loads it only when Ray runs its gather-and-write
stage (`CallsDatasource`). Sources resolve on the driver
exactly as the CLI resolves them (`sources.open_source`: listings and footers only), and each chunk of a
source becomes one read task that reads and normalises it with the scan's own code (`scan.scan_chunk`),
so a Dataset holds the same pairs, dropped the same way, as a text merge of that source would.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import ray.data
from fsspec import AbstractFileSystem
from pydantic import ValidationError
from ray.data.block import Block, BlockAccessor, BlockMetadata
from ray.data.datasource import Datasink, Datasource, ReadTask

from raymerge import storage
from raymerge.data import StagedOutput
from raymerge.errors import InvalidInput
from raymerge.report import Report
from raymerge.text import finefoundry, sinks
from raymerge.text.columns import PAIR_SCHEMA, role_table
from raymerge.text.config import TextInput
from raymerge.text.scan import ScanSpec, scan_chunk
from raymerge.text.sources import Chunk, Source, open_source

__all__ = ["CallsDatasource", "FineFoundryDatasink", "TextDatasource", "read_finefoundry", "read_text"]
RECORD_SCHEMA = pa.schema([("record", pa.string())])


class CallsDatasource(Datasource):
    """Calls of a plain generator function as Ray Data read tasks, one per call, each record it yields (JSON
    text) a one-row block: `Executor.stream`'s Ray side. A text merge's runs of blocks are such calls: each
    reads its rows by chunk and row range, which Ray's own readers cannot address (they give no row positions
    to gather by), and writes the blocks' parts, so only records of a few bytes reach the object store."""

    def __init__(self, fn: Callable[..., Iterator[str]], calls: Sequence[Sequence[Any]], name: str) -> None:
        super().__init__()
        self.fn, self.calls, self.name = fn, list(calls), name

    def get_name(self) -> str:
        return self.name

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        """One task per call, whatever `parallelism` says: the calls are already cut to task size."""
        meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
        return [ReadTask(functools.partial(_records, self.fn, args), meta, schema=RECORD_SCHEMA) for args in self.calls]


def _records(fn: Callable[..., Iterator[str]], args: Sequence[Any]) -> Iterator[pa.Table]:
    for record in fn(*args):
        yield pa.Table.from_arrays([pa.array([record], pa.string())], schema=RECORD_SCHEMA)


class TextDatasource(Datasource):
    """Resolved text sources (`sources.Source`), one read task per chunk, in source then chunk order.

    `spec` says what a chunk becomes: `input`/`output` pairs by the auto-mapping (or the given columns and
    roles), or its whole rows (`spec.keep`).
    """

    def __init__(self, sources: Sequence[Source], spec: ScanSpec) -> None:
        super().__init__()
        self.sources, self.spec = list(sources), spec
        self._bytes = {id(c): n for src in self.sources for c, n in zip(src.chunks, _chunk_bytes(src), strict=True)}

    def get_name(self) -> str:
        return "Text"

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(self._bytes.values()) or None

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        """One task per chunk (`parallelism` is a hint; chunks are already cut to task size)."""
        out = []
        for src in self.sources:
            for chunk in src.chunks:
                meta = BlockMetadata(
                    num_rows=None, size_bytes=self._bytes[id(chunk)], input_files=(chunk.path,), exec_stats=None
                )
                read = functools.partial(_read_chunk, src.fs, chunk, src.url, self.spec)
                schema = None if self.spec.keep else PAIR_SCHEMA
                out.append(ReadTask(read, meta, schema=schema, per_task_row_limit=per_task_row_limit))
        return out


def _chunk_bytes(src: Source) -> list[int]:
    """Each chunk's share of its file's bytes: an estimate for Ray Data's block sizing, from listings only."""
    sizes = {p: int(src.fs.size(p) or 0) for p in dict.fromkeys(c.path for c in src.chunks)}
    per_file = {p: sum(c.path == p for c in src.chunks) for p in sizes}
    return [
        c.stop - c.start if c.format == "jsonl" and c.stop >= 0 else sizes[c.path] // per_file[c.path]
        for c in src.chunks
    ]


def _read_chunk(fs: AbstractFileSystem, chunk: Chunk, where: str, spec: ScanSpec) -> list[pa.Table]:
    _, table = scan_chunk(fs, chunk, where, spec)
    return [table]


def read_text(
    paths: str | Sequence[str],
    *,
    format: str = "auto",
    split: str | None = None,
    config: str | None = None,
    session: int | str | None = None,
    columns: Literal["pairs", "keep"] = "pairs",
    input_column: str | None = None,
    output_column: str | None = None,
    roles: Mapping[str, Sequence[str]] | None = None,
    storage_options: dict[str, Any] | None = None,
    **read_args: Any,
) -> ray.data.Dataset:
    """Any source the text family reads, as a Dataset of `input`/`output` strings (`columns="pairs"`) or of its
    whole rows (`columns="keep"`); several paths are read one after the other.

    Sources: JSON, JSONL, CSV, Parquet (also gzip/bz2/xz/zstd-compressed text), Hugging Face folders (hub
    snapshots, the hub cache, `save_to_disk`), FineFoundry databases (`session`). The options mean what they
    mean for a config's input (docs/text.md), and a bad path, split or session is refused here, before any
    task runs. Pairs with an empty side are dropped, as a merge drops them. `read_args` go to
    `ray.data.read_datasource` (e.g. `concurrency`, `ray_remote_args`).

    Example:
        >>> import json, tempfile, raymerge.data as rd
        >>> path = tempfile.mkdtemp() + "/alpaca.jsonl"
        >>> rows = [{"instruction": "Add", "input": "2+2", "output": "4"}, {"instruction": "Hi", "output": "Hello"}]
        >>> _ = open(path, "w").write("\\n".join(json.dumps(r) for r in rows))
        >>> rd.read_text(path).take_all()
        [{'input': 'Add\\n2+2', 'output': '4'}, {'input': 'Hi', 'output': 'Hello'}]
    """
    listed = [paths] if isinstance(paths, str) else list(paths)
    if not listed:
        raise InvalidInput("read_text: give at least one path")
    options = {
        "format": format,
        "split": split,
        "config": config,
        "session": session,
        "input_column": input_column,
        "output_column": output_column,
        "roles": dict(roles) if roles is not None else None,
        "storage_options": storage_options or {},
    }
    opened = []
    for p in listed:
        try:
            inp = TextInput.model_validate({"path": p, **options})
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'input'}: {err['msg']}" for err in e.errors())
            raise InvalidInput(f"read_text({p!r}): {problems}") from None
        fs, path = storage.resolve(inp.path, inp.storage_options)
        opened.append(open_source(fs, path, inp.format, inp.split, inp.config, inp.session_choice()))
    if columns not in ("pairs", "keep"):
        raise InvalidInput(f"read_text: columns={columns!r}; expected pairs or keep")
    keep = columns == "keep"
    if keep and (input_column or roles):
        raise InvalidInput("read_text: input_column, output_column and roles apply to columns='pairs'")
    r = roles or {}
    spec = ScanSpec(
        keep,
        input_column,
        output_column,
        role_table(r.get("user"), r.get("assistant"), r.get("system")),
    )
    return ray.data.read_datasource(TextDatasource(opened, spec), **read_args)


def read_finefoundry(
    db: str,
    session: int | str | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
    **read_args: Any,
) -> ray.data.Dataset:
    """One session of a FineFoundry database (a number is its id, a string its name; none: the only one) as
    a Dataset of `input`/`output` pairs, in id order, one read task per range of pair ids.

    Example:
        >>> import tempfile, raymerge.data as rd
        >>> from raymerge.text import finefoundry
        >>> db = tempfile.mkdtemp() + "/finefoundry.db"
        >>> spec = finefoundry.SessionSpec("seed", "scrape", 1, replace=False)
        >>> import pyarrow as pa
        >>> _ = finefoundry.write_session(db, spec, [pa.record_batch({"input": ["q"], "output": ["a"]})])
        >>> rd.read_finefoundry(db, "seed").take_all()
        [{'input': 'q', 'output': 'a'}]
    """
    return read_text(db, format="sqlite", session=session, storage_options=storage_options, **read_args)


class FineFoundryDatasink(StagedOutput, Datasink):
    """Pairs (`input`, `output` string columns) written as a new session of a FineFoundry database, in one
    transaction, as a text merge writes one: the database (created if missing) is copied into staging, gains
    the session, and replaces the original at the commit. `overwrite` replaces a session of the same name
    (otherwise one is an error, raised here).

    Write tasks put their pairs in Arrow parts beside the staged file; the driver then streams the parts, in
    write task order, into the session. With `DataContext.get_current().execution_options.preserve_order =
    True` that is the Dataset's order.

    Example:
        >>> import ray, tempfile, raymerge.data as rd
        >>> db = tempfile.mkdtemp() + "/finefoundry.db"
        >>> pairs = ray.data.from_items([{"input": "2+2", "output": "4"}, {"input": "Hi", "output": "Hello"}])
        >>> pairs.write_datasink(rd.FineFoundryDatasink(db, "curated"))
        >>> sorted(r["output"] for r in rd.read_finefoundry(db, "curated").take_all())
        ['4', 'Hello']
    """

    def __init__(
        self,
        db: str,
        session_name: str,
        *,
        overwrite: bool = False,
        storage_options: dict[str, Any] | None = None,
        operation: str = "ray-data",
        source_count: int = 1,
    ) -> None:
        super().__init__(db, storage_options, overwrite=overwrite, is_file=True, allow_existing=True)
        if not session_name:
            raise InvalidInput("FineFoundryDatasink: session_name must not be empty")
        stage = self.staging
        self.existing = storage.exists(stage.fs, stage.target)
        if self.existing:
            clash = finefoundry.session_conflict(finefoundry.local_sqlite(stage.fs, stage.target), session_name)
            if clash and not overwrite:
                raise InvalidInput(
                    f"output {self.target_url} already has a session named {session_name!r} "
                    f"(id {', '.join(map(str, clash))}); pass overwrite=True to replace that session"
                )
        self.session = finefoundry.SessionSpec(session_name, operation, source_count, replace=overwrite)
        self.part_dir = storage.join(stage.dir, "parts")  # beside the staged file, as the CLI puts them

    def write(self, blocks: Iterable[Block], ctx: Any) -> tuple[int, int] | None:
        """This task's pairs as one Arrow part, numbered by the task; (task, pairs) or None for no pairs."""
        path = sinks.part_path(self.part_dir, "arrow", ctx.task_idx)
        rows = 0
        with contextlib.ExitStack() as opened:
            writer = None
            for block in blocks:
                table = _pairs(BlockAccessor.for_block(block).to_arrow())
                if not table.num_rows:
                    continue
                if writer is None:
                    self.fs.makedirs(self.part_dir, exist_ok=True)
                    f = opened.enter_context(self.fs.open(path, "wb"))
                    writer = opened.enter_context(pa.ipc.new_stream(f, PAIR_SCHEMA))
                writer.write_table(table)
                rows += table.num_rows
        return (ctx.task_idx, rows) if rows else None

    def finish(self, results: list[Any]) -> Report:
        """All parts, in task order, into the session (one transaction), in the staged copy of the database."""
        done = sorted(r for r in results if r)
        parts = [sinks.part_path(self.part_dir, "arrow", i) for i, _ in done]
        existing = self.staging.target if self.existing else None
        sinks.assemble("sqlite", self.fs, parts, self.fs, self.root, session=self.session, existing_db=existing)
        if storage.exists(self.fs, self.part_dir):
            self.fs.rm(self.part_dir, recursive=True)
        rows = sum(n for _, n in done)
        report = Report(kind="text", operation="write", output=self.target_url, unit="pairs", rows_out=rows)
        report.details["session_name"] = self.session.name
        return report


def _pairs(table: pa.Table) -> pa.Table:
    """The `input`/`output` columns as strings; a missing column or a null value is refused by name."""
    missing = [c for c in PAIR_SCHEMA.names if c not in table.column_names]
    if missing:
        raise InvalidInput(
            f"FineFoundryDatasink: the Dataset has no {' or '.join(missing)} column (columns: "
            f"{', '.join(table.column_names)}); read it with read_text, or rename its columns first"
        )
    out = []
    for name in PAIR_SCHEMA.names:
        col = pc.cast(table[name], pa.string())
        if col.null_count:
            raise InvalidInput(f"FineFoundryDatasink: {col.null_count} row(s) have no {name} (null)")
        out.append(col)
    return pa.Table.from_arrays(out, schema=PAIR_SCHEMA)
