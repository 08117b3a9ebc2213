"""The WebDataset family's Ray Data blocks: a key join read as a Dataset, and Energon-ready shards written from one.

The only module of the family that imports Ray: a `raymerge run` never loads it. Both reuse the family's run
as it is. `WebDatasetJoin` plans a `join` exactly as the CLI does (header scans, hash buckets, the join, the
range sort: errors for missing keys, duplicates and member clashes are the CLI's), then each read task
gathers its samples' member bytes by range reads (`writer.RangeReader`). `EnergonDatasink` is
index-then-gather: write tasks append the members' bytes to a spool file each and keep a key table of where
they are; the driver checks keys (hash buckets), cuts shards from the sizes, and the family's `execute`
writes the tars, `.tar.idx`, `.nv-meta` and `index.sqlite` by range reads from the spools. Shards therefore
depend only on the samples and their order, not on how Ray cut the Dataset into blocks, at the price of the
payload written twice (spool, then shard).

Somewhat over 400 lines: the reader and the sink are the family's two Ray Data blocks and share its plan and
writer; each is a thin layer over them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.data
from fsspec import AbstractFileSystem
from pydantic import ValidationError
from ray.data.block import Block, BlockAccessor, BlockMetadata
from ray.data.datasource import Datasink, Datasource, ReadTask

from raymerge import storage
from raymerge.data import StagedOutput, ray_executor
from raymerge.errors import InvalidInput
from raymerge.executor import Executor
from raymerge.report import Report
from raymerge.transport import unpack
from raymerge.webdataset import inline, keytable, layout, tarindex, tasks
from raymerge.webdataset import plan as planning
from raymerge.webdataset.config import Config
from raymerge.webdataset.config import check as check_config
from raymerge.webdataset.execute import execute
from raymerge.webdataset.inline import Carried
from raymerge.webdataset.plan import WebDatasetPlan
from raymerge.webdataset.sources import Shard
from raymerge.webdataset.writer import RangeReader, shard_members

__all__ = ["EnergonDatasink", "WebDatasetJoin", "read_webdataset_join"]

KEY = "__key__"
BLOCK_SAMPLES = 1024  # samples per block a join read task yields, at most
BLOCK_BYTES = 64 << 20  # payload bytes per block, at most (a larger sample gets a block of its own)
MAX_BUCKETS = 64
InputSpec = str | Mapping[str, Any]


def _validated(data: dict[str, Any], who: str) -> Config:
    """A webdataset config from a function's arguments; a bad value is refused naming the argument."""
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise InvalidInput(f"{who}: {problems}") from None


class WebDatasetJoin(Datasource):
    """The key join of WebDataset inputs, planned on the cluster when made, read as joined samples.

    `inputs[0]` is the primary: it decides which samples exist and their order (input order of its shards);
    each secondary adds its members by exact key, `nonmatch` deciding what a primary key missing from it does
    (`error`: refused here, `skip`: sample dropped, `none`: its columns are null). An input is a folder, a tar,
    a brace pattern, or a mapping of a config input's keys (`path`, `shards`, `storage_options`, `nonmatch`,
    `prefix`). `report` says what the join matched and dropped. One read task per `samples_per_task` samples
    (or `bytes_per_task` of payload).
    """

    def __init__(
        self,
        inputs: Sequence[InputSpec],
        *,
        storage_options: dict[str, Any] | None = None,
        samples_per_task: int = 4096,
        bytes_per_task: int = 256 << 20,
    ) -> None:
        super().__init__()
        specs: list[dict[str, Any]] = [{"path": i} if isinstance(i, str) else dict(i) for i in inputs]
        for spec in specs:
            spec.setdefault("storage_options", storage_options or {})
        cfg = _validated(
            {
                "kind": "webdataset",
                "operation": "join",
                "inputs": specs,
                "output": {"path": "(read)", "maxcount": samples_per_task, "maxsize": bytes_per_task},
            },
            "read_webdataset_join",
        )
        planning.check(cfg)
        with ray_executor() as ex:
            the_plan = planning.plan(cfg, ex)
            names = ex.get([ex.submit(_member_names, c) for c in the_plan.chunks])
            self.members = sorted(set().union(*names))
            self._pieces = _cut(ex, the_plan)
        self.report: Report = the_plan.report
        self.shards, self.filesystems = the_plan.shards, the_plan.filesystems
        self.specs = the_plan.output_shards

    def get_name(self) -> str:
        return "WebDatasetJoin"

    @property
    def schema(self) -> pa.Schema:
        """`__key__`, then one binary column per member name (null where a sample has no such member)."""
        return pa.schema([(KEY, pa.string())] + [(m, pa.binary()) for m in self.members])

    def estimate_inmemory_data_size(self) -> int | None:
        return int(sum(s.nbytes for s in self.specs))

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        """One task per piece of the joined order, in that order."""
        out = []
        for spec, pieces in zip(self.specs, self._pieces, strict=True):
            meta = BlockMetadata(num_rows=spec.count, size_bytes=int(spec.nbytes), input_files=None, exec_stats=None)
            read = functools.partial(_read_joined, pieces, self.shards, self.filesystems, self.members)
            out.append(ReadTask(read, meta, schema=self.schema, per_task_row_limit=per_task_row_limit))
        return out


def _cut(ex: Executor, the_plan: WebDatasetPlan) -> list[list[Any]]:
    """Handles of each read task's rows: every ordered chunk cut once, into its pieces."""
    wanted: dict[int, list[tuple[int, int]]] = {}
    for spec in the_plan.output_shards:
        for c, a, b in spec.pieces:
            wanted.setdefault(c, []).append((a, b))
    cut: dict[tuple[int, int, int], Any] = {}
    for c, bounds in wanted.items():
        handles = ex.submit(tasks.cut_chunk, the_plan.chunks[c], bounds, num_returns=len(bounds))
        cut |= dict(zip([(c, a, b) for a, b in bounds], [handles] if len(bounds) == 1 else handles, strict=True))
    return [[cut[p] for p in spec.pieces] for spec in the_plan.output_shards]


def _member_names(df: pl.DataFrame) -> set[str]:
    return set(df["names"].explode().drop_nulls().unique().to_list())


def _read_joined(
    pieces: list[Any], shards: list[Shard], filesystems: list[AbstractFileSystem], names: list[str]
) -> Iterable[pa.Table]:
    """Joined samples of some key-table rows, a block at a time, payload by range reads."""
    rows = pl.concat([unpack(p) for p in ray.get(pieces)])
    reader = RangeReader(shards, filesystems)
    try:
        cum = np.concatenate([[0], np.cumsum(rows["nbytes"].to_numpy())])
        a = 0
        while a < rows.height:
            b = min(a + BLOCK_SAMPLES, max(a + 1, int(np.searchsorted(cum, cum[a] + BLOCK_BYTES, side="right")) - 1))
            yield _samples_table(rows[a:b], reader, names)
            a = b
    finally:
        reader.close()


def _samples_table(rows: pl.DataFrame, reader: RangeReader, names: list[str]) -> pa.Table:
    members = shard_members(rows)
    src, offset, size = members.srcs, members.offsets, members.sizes
    data = Carried(members.data).payloads(reader, np.arange(len(size)), src, offset, size)
    columns: dict[str, list[bytes | None]] = {n: [None] * rows.height for n in names}
    for sample, name, value in zip(members.sample.tolist(), members.exts.to_pylist(), data, strict=True):
        columns[name][sample] = bytes(value)
    arrays = [pa.array(rows["key"].to_list(), pa.string())] + [pa.array(columns[n], pa.binary()) for n in names]
    return pa.Table.from_arrays(arrays, names=[KEY, *names])


def read_webdataset_join(
    primary: InputSpec,
    secondaries: Sequence[InputSpec],
    *,
    nonmatch: str | Sequence[str] = "error",
    prefixes: Sequence[str | None] | None = None,
    storage_options: dict[str, Any] | None = None,
    samples_per_task: int = 4096,
    **read_args: Any,
) -> ray.data.Dataset:
    """The distributed key join of a primary WebDataset with secondaries, as a Dataset of joined samples:
    `__key__` and one bytes column per member (`jpg`, `txt`, ...; null where `nonmatch="none"` found none).

    The join runs when this is called (scan tasks, then one task per hash bucket; no task sees every key), so
    a missing key (`nonmatch="error"`, the default; or one mode per secondary), a duplicate key, or a member
    name two inputs share is refused here, before anything reads payload; `prefixes` rename a secondary's
    members (`KEY.PREFIX.EXT`). Samples come in the primary's order. `read_args` go to
    `ray.data.read_datasource`.

    Example:
        >>> import tempfile, raymerge.data as rd
        >>> from pathlib import Path
        >>> from raymerge.webdataset import samples
        >>> root, keys = Path(tempfile.mkdtemp()), samples.keys(6)
        >>> _ = samples.write_shards(root / "images", samples.image_samples(keys, size=8), 2)
        >>> _ = samples.write_shards(root / "captions", samples.caption_samples(keys[:4]), 1)
        >>> ds = rd.read_webdataset_join(str(root / "images"), [str(root / "captions")], nonmatch="skip")
        >>> [(r["__key__"], r["txt"]) for r in ds.take(2)]
        [('part_a/000000', b'a caption for part_a/000000'), ('part_b/000001', b'a caption for part_b/000001')]
    """
    modes = [nonmatch] * len(secondaries) if isinstance(nonmatch, str) else list(nonmatch)
    names = list(prefixes) if prefixes is not None else [None] * len(secondaries)
    if len(modes) != len(secondaries) or len(names) != len(secondaries):
        raise InvalidInput("read_webdataset_join: give one nonmatch and one prefix per secondary (or one for all)")
    inputs: list[InputSpec] = [primary]
    for spec, mode, prefix in zip(secondaries, modes, names, strict=True):
        found = {"path": spec} if isinstance(spec, str) else dict(spec)
        found.setdefault("nonmatch", mode)
        if prefix is not None:
            found.setdefault("prefix", prefix)
        inputs.append(found)
    source = WebDatasetJoin(inputs, storage_options=storage_options, samples_per_task=samples_per_task)
    return ray.data.read_datasource(source, **read_args)


class EnergonDatasink(StagedOutput, Datasink):
    """Samples written as an Energon-ready WebDataset folder: deterministic shards (`pattern`, at most
    `maxcount` samples and `maxsize` payload bytes each, in the Dataset's order), each with its `.tar.idx`,
    and `.nv-meta` (`.info.json`, `split.yaml`, `dataset.yaml`, `index.sqlite`, `index.uuid`), committed
    atomically (`overwrite` replaces an existing folder only then).

    A row is a sample: `__key__` (a string; without the column, keys are the samples' zero-padded positions)
    and one column per member, bytes or str (str is written as UTF-8; null: no such member). Other `__...__`
    columns (`__url__` of `ray.data.read_webdataset`) are not members. Keys must be unique. The options are
    those of a webdataset config's `output` (docs/webdataset.md). With `DataContext.get_current().
    execution_options.preserve_order = True` the shards follow the Dataset's order exactly.

    Example:
        >>> import ray, tempfile, raymerge.data as rd
        >>> out = tempfile.mkdtemp() + "/energon"
        >>> rows = [{"__key__": f"s{i:03d}", "txt": f"caption {i}", "cls": str(i % 2)} for i in range(5)]
        >>> ray.data.from_items(rows).write_datasink(rd.EnergonDatasink(out, maxcount=2))
        >>> sorted(p.name for p in __import__("pathlib").Path(out).glob("*.tar"))
        ['shard-000000.tar', 'shard-000001.tar', 'shard-000002.tar']
    """

    def __init__(
        self,
        path: str,
        *,
        maxcount: int = 10_000,
        maxsize: int = 1_000_000_000,
        pattern: str = "shard-%06d.tar",
        mtime: int = 0,
        split_ratio: dict[str, float] | None = None,
        sample_type: str | None = None,
        field_map: dict[str, str] | None = None,
        energon: bool = True,
        overwrite: bool = False,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.config = _validated(
            {
                "kind": "webdataset",
                "operation": "reshard",
                "inputs": [{"path": "(spool)"}],
                "output": {
                    "path": path,
                    "storage_options": storage_options or {},
                    "overwrite": overwrite,
                    "maxcount": maxcount,
                    "maxsize": maxsize,
                    "pattern": pattern,
                    "mtime": mtime,
                    "energon": energon,
                    "split_ratio": split_ratio,
                    "sample_type": sample_type,
                    "field_map": field_map,
                },
            },
            "EnergonDatasink",
        )
        check_config(self.config)
        super().__init__(path, storage_options, overwrite=overwrite)
        self.spool_dir = storage.join(self.scratch, "spool")

    def write(self, blocks: Iterable[Block], ctx: Any) -> dict[str, Any] | None:
        """Map: this task's member bytes appended to one spool file, and its key table beside it."""
        base = storage.join(self.spool_dir, f"{ctx.task_idx:06d}")
        tables: list[pl.DataFrame] = []
        keyed: set[bool] = set()
        size = rows = 0
        self.fs.makedirs(self.spool_dir, exist_ok=True)
        with self.fs.open(base + ".bin", "wb") as f:
            for block in blocks:
                table = BlockAccessor.for_block(block).to_arrow()
                if not table.num_rows:
                    continue
                df, pieces, has_keys = _spool_block(table, size, ctx.task_idx, rows)
                keyed.add(has_keys)
                for piece in pieces:
                    f.write(piece)
                size += sum(len(p) for p in pieces)
                rows += df.height
                tables.append(df)
        if not rows:
            self.fs.rm(base + ".bin")
            return None
        with self.fs.open(base + ".parquet", "wb") as f:
            pl.concat(tables).write_parquet(f)
        if len(keyed) > 1:
            raise InvalidInput("EnergonDatasink: some blocks have a __key__ column and others not")
        return {"task": ctx.task_idx, "spool": base + ".bin", "keys": base + ".parquet", "bytes": size, "keyed": keyed}

    def finish(self, results: list[Any]) -> Report:
        """Reduce: keys checked, shards cut from the sizes, then the family's writers, index and metadata."""
        done = sorted((r for r in results if r), key=lambda r: r["task"])
        if not done:
            raise InvalidInput("EnergonDatasink: the Dataset has no samples; an Energon dataset needs at least one")
        keyed = set().union(*(r["keyed"] for r in done))
        if len(keyed) > 1:
            raise InvalidInput("EnergonDatasink: some blocks have a __key__ column and others not")
        shards = [Shard(0, r["spool"], f"spool {r['task']}", r["bytes"], False) for r in done]
        out = self.config.output
        with ray_executor() as ex:
            chunks = [ex.submit(_load_keys, self.fs, r["keys"], i) for i, r in enumerate(done)]
            if keyed == {True}:
                _check_unique(ex, chunks)
            packer = layout.ShardPacker(out.maxcount, out.maxsize, out.pattern)
            counts = []
            for i, chunk in enumerate(chunks):
                sizes = ex.get(ex.submit(tasks.chunk_sizes, chunk))
                counts.append(len(sizes))
                packer.add_chunk(i, sizes)
            total = sum(counts)
            report = Report("webdataset", "write", self.target_url, unit="samples", rows_out=total)
            width = None if keyed == {True} else max(6, len(str(total - 1)))
            the_plan = WebDatasetPlan(self.config, report, [], shards, [self.fs], chunks, packer.shards, width)
            report = execute(the_plan, self.staging, ex)
        report.details["shards"] = len(packer.shards)
        return report


def _spool_block(table: pa.Table, at: int, task: int, first_row: int) -> tuple[pl.DataFrame, list[memoryview], bool]:
    """A block's key table (members at spool offsets from `at`), the member bytes to append (one buffer per
    column) and whether it had keys; a value that is neither bytes nor str, a null key or a key that would not
    read back is refused."""
    n = table.num_rows
    names = [c for c in table.column_names if not c.startswith("__")]
    pieces: list[memoryview] = []
    found: list[tuple[np.ndarray, int, np.ndarray, np.ndarray]] = []  # (rows, column, offsets, sizes)
    for k, name in enumerate(names):
        col = table[name].combine_chunks()
        if pa.types.is_null(col.type) or not n:
            continue
        if not any(is_type(col.type) for is_type in _MEMBER_TYPES):
            raise InvalidInput(
                f"EnergonDatasink: column {name!r} holds {col.type}; a member is bytes or str, so encode it "
                "first (e.g. with map_batches: json.dumps(...).encode() for json, str(x) for cls)"
            )
        col = pc.cast(col, pa.large_binary())
        bounds = np.frombuffer(col.buffers()[1], np.int64)[col.offset : col.offset + n + 1]
        if col.buffers()[2] is not None and bounds[-1] > bounds[0]:
            pieces.append(memoryview(col.buffers()[2])[bounds[0] : bounds[-1]])
        rows = np.flatnonzero(col.is_valid().to_numpy(zero_copy_only=False))
        found.append((rows, k, at + bounds[rows] - bounds[0], np.diff(bounds)[rows]))
        at += int(bounds[-1] - bounds[0])
    sample = np.concatenate([f[0] for f in found] + [np.zeros(0, np.int64)])
    column = np.concatenate([np.full(len(f[0]), f[1]) for f in found] + [np.zeros(0, np.int64)])
    order = np.lexsort((column, sample))
    sample, column = sample[order], column[order]
    offsets = np.concatenate([f[2] for f in found] + [np.zeros(0, np.int64)])[order]
    sizes = np.concatenate([f[3] for f in found] + [np.zeros(0, np.int64)])[order]
    keys, keyed = _keys(table, n)
    counts = np.bincount(sample, minlength=n)
    if (counts == 0).any():
        what = repr(keys[int(np.argmax(counts == 0))]) if keyed else f"at row {first_row + int(np.argmax(counts == 0))}"
        raise InvalidInput(f"EnergonDatasink: sample {what} has no members (every member column is null)")
    starts = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    exts = pa.array(names, pa.string()).take(pa.array(column))
    if keyed:
        _check_names(keys, sample, exts)
    df = pl.DataFrame(
        pa.table(
            {
                "key": pa.array(keys, pa.string()),
                "order": pa.array(keytable.shard_order(np.full(n, task), np.arange(first_row, first_row + n))),
                "names": pa.ListArray.from_arrays(starts, exts),
                "srcs": pa.ListArray.from_arrays(starts, pa.array(np.zeros(len(sample), np.int32))),
                "offsets": pa.ListArray.from_arrays(starts, pa.array(offsets.astype(np.int64))),
                "sizes": pa.ListArray.from_arrays(starts, pa.array(sizes.astype(np.int64))),
                "data": pa.ListArray.from_arrays(starts, inline.none_carried(len(sample))),
                "nbytes": pa.array(np.bincount(sample, weights=sizes, minlength=n).astype(np.int64)),
            }
        )
    ).cast(keytable.SCHEMA)
    return df, pieces, keyed


_MEMBER_TYPES = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_string, pa.types.is_large_string)


def _keys(table: pa.Table, n: int) -> tuple[list[str], bool]:
    """The rows' keys and True, or "" for each and False when the Dataset has no `__key__` (the output is then
    keyed by position)."""
    if KEY not in table.column_names:
        return [""] * n, False
    keys = pc.cast(table[KEY], pa.string())
    if keys.null_count:
        raise InvalidInput(f"EnergonDatasink: {keys.null_count} sample(s) have no {KEY} (null)")
    return keys.to_pylist(), True


def _check_names(keys: list[str], sample: np.ndarray, exts: pa.Array) -> None:
    """Every `KEY.EXT` reads back as that key and member (Energon's name rule), and stays inside the folder."""
    names = pc.binary_join_element_wise(pa.array(keys, pa.string()).take(pa.array(sample)), exts, ".")
    found_keys, found_exts = tarindex.split_names(names.cast(pa.large_string()))
    ok = pc.and_kleene(
        pc.equal(found_keys, pa.array(keys, pa.string()).take(pa.array(sample)).cast(pa.large_string())),
        pc.equal(found_exts, exts.cast(pa.large_string())),
    )
    bad = np.flatnonzero(~pc.fill_null(ok, False).to_numpy(zero_copy_only=False))
    if len(bad):
        i = int(bad[0])
        raise InvalidInput(
            f"EnergonDatasink: member {names[i].as_py()!r} would not read back as key {keys[sample[i]]!r} and "
            f"member {exts[i].as_py()!r}; a key has no dot after its last '/', and a member name no '/'"
        )
    for key in set(keys):
        why = tarindex.unsafe_name(key) or ("is a meta name (__...__)" if tarindex.is_meta(key) else None)
        if why:
            raise InvalidInput(f"EnergonDatasink: key {key!r} {why}")


def _load_keys(fs: AbstractFileSystem, path: str, spool: int) -> pl.DataFrame:
    """A write task's key table, its members pointing into spool `spool`."""
    with fs.open(path, "rb") as f:
        df = pl.from_arrow(pq.read_table(f))
    assert isinstance(df, pl.DataFrame)
    return df.with_columns(pl.col("srcs").list.eval(pl.element() * 0 + spool)).cast(keytable.SCHEMA)


def _check_unique(ex: Executor, chunks: list[Any]) -> None:
    """Keys unique across every spool (Energon requires it), checked in hash buckets: no task sees every key."""
    n = max(1, min(MAX_BUCKETS, ex.parallelism(2), len(chunks)))
    parts = [ex.submit(_buckets, c, n, num_returns=n) for c in chunks]
    parts = [[p] if n == 1 else p for p in parts]
    results = ex.get(
        [
            ex.submit(tasks.check_and_join, "reshard", [len(chunks)], [], True, None, *[p[b] for p in parts])
            for b in range(n)
        ]
    )
    found = [r[0].duplicates[0] for r in results]
    total = sum(count for count, _ in found)
    if total:
        examples = sorted(key for _, shown in found for key, _ in shown)[:10]
        raise InvalidInput(
            f"EnergonDatasink: {total} sample key(s) occur more than once (Energon needs unique keys), e.g. "
            + ", ".join(map(repr, examples))
        )


def _buckets(df: pl.DataFrame, n: int) -> Any:
    parts = keytable.split_by(df, keytable.hash_buckets(df["key"], n), n)
    return parts[0] if n == 1 else parts
