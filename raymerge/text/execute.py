"""Write a planned text merge into staging: the gather-and-write pass.

Each block is gathered from the sources themselves (`gather`: the chunks holding its rows, read and normalised
again), so nothing is held between the plan and the write but small sources' rows. On local disk the blocks
stream through Ray Data: one read task per run of consecutive blocks gathers them and writes each block's parts
as files as soon as it is made, Ray Data's streaming executor bounding the tasks in flight and showing
per-operator progress (a merge of held sources alone, small by definition, runs the same runs as Ray tasks,
without Ray Data's start-up); then,
all at once, one Ray task per target file streams the parts in order into it, and one per shard of a dataset
folder (`hf`, `save_to_disk`) writes that shard. On object storage one Ray task per block gathers it and the
blocks' serialised rows travel as task results instead of files, so no byte is uploaded twice: a JSON-lines
or JSON target is one multipart upload whose parts (>= 5 MiB each but the last, consecutive blocks
grouped) are sent by their own tasks as the blocks finish, in parallel; shards are written by their tasks
straight to their final keys; parquet and SQLite, which one writer must write in order, get every block's
Arrow rows in one task. Exports are staged like the main output and committed just before it, so a failed
run commits none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.executor import Executor
from raymerge.report import Report
from raymerge.text import folders, sinks, tasks
from raymerge.text.features import features_of
from raymerge.text.gather import Run, cut_runs
from raymerge.text.plan import TextPlan
from raymerge.text.targets import TargetPlan

if TYPE_CHECKING:
    from raymerge.s3commit import PartUpload

MIN_PART_BYTES = 5 << 20  # S3's smallest part but the last
RUNS_PER_CPU = 2  # runs of consecutive blocks: a chunk is read again only where two runs meet
MAX_PARTS = 9_000  # S3 allows 10,000 parts per upload; parts grow with the output to stay below


def execute(plan: TextPlan, staging: storage.Staging, executor: Executor) -> Report:
    """Write the output and every export; the exports are committed here, the output by the core."""
    report = plan.report
    opened: list[storage.Staging] = []
    try:
        for t in plan.targets[1:]:
            opened.append(t.staging().open())
        stages = [staging, *opened]
        if storage.is_local(staging.fs):
            _write_through_files(plan, stages, executor)
        else:
            _write_through_results(plan, stages, executor)
        for e in opened:
            e.commit()
    finally:
        for e in opened:
            e.abort()
    report.files_written = [storage.basename(staging.target)] + [e.target_url for e in opened]
    return report


# -- local disk: block parts are files ------------------------------------------------------------
def _write_through_files(plan: TextPlan, stages: list[storage.Staging], executor: Executor) -> None:
    """Parts are intermediate files: beside a file output's staged file, in scratch for a folder output (whose
    staging holds exactly the output)."""
    staging = stages[0]
    part_dir = storage.join(staging.scratch if plan.targets[0].is_folder else staging.dir, "parts")
    staging.fs.makedirs(part_dir, exist_ok=True)
    written = _write_blocks(plan, staging.fs, part_dir, executor)
    executor.progress(f"writing {len(plan.targets)} target(s)")
    handles, folder_jobs = [], []
    for t, st in zip(plan.targets, stages, strict=True):
        if t.is_folder:
            ranges = _shard_ranges(t, st, written)
            jobs = []
            for i, (start, stop) in enumerate(ranges):
                parts = folders.parts_for(
                    [r for r, _ in written], start, stop, lambda k: sinks.part_path(part_dir, "arrow", k)
                )
                out = folders.shard_path(t.format, st.path, t.split, i, len(ranges))
                shard = (t.format, staging.fs, parts, start, stop, st.fs, out, plan.schema)
                jobs.append(executor.submit(tasks.write_shard, *shard))
            folder_jobs.append((t, st, jobs))
        else:
            existing = st.target if t.existing_db else None
            args = (t, staging.fs, part_dir, len(plan.blocks), st.fs, st.path, existing, plan.schema)
            handles.append(executor.submit(tasks.write_target, *args))
    executor.get(handles)
    _finish_folders(plan, folder_jobs, written, executor)
    staging.fs.rm(part_dir, recursive=True)


def _write_blocks(plan: TextPlan, fs: AbstractFileSystem, part_dir: str, executor: Executor) -> list[tuple[int, int]]:
    """Every block gathered and its parts written, by runs of consecutive blocks streamed through Ray Data (or
    one after the other in this process); (rows, Arrow bytes) per block, in block order. Refuses a total that
    differs from the plan's."""
    kinds = _kinds(plan)
    executor.progress(f"gathering {len(plan.blocks)} block(s) of {plan.report.rows_out:,} rows")
    runs = _runs(plan, executor.parallelism(RUNS_PER_CPU))
    calls = [(run, fs, part_dir, kinds, *_given(plan, run)) for run in runs]
    records: Iterable[dict[str, int]]
    if all(s.held for s in plan.sources):  # nothing streams: Ray tasks, without Ray Data's start-up
        done_runs = executor.map(tasks.write_blocks, calls, label="blocks", ordered=False)
        records = (r for _, done in done_runs for r in done)
    else:
        records = executor.stream(tasks.write_run, calls, _datasource, label="gather-and-write")
    written: list[tuple[int, int]] = [(0, 0)] * len(plan.blocks)
    for done in records:
        written[done["block"]] = (done["rows"], done["bytes"])
    _check_rows(plan, written)
    return written


def _datasource(fn: Callable[..., Iterator[str]], calls: Sequence[Sequence[Any]]) -> Any:
    """The runs as a Ray Data source (imported only when Ray runs them)."""
    from raymerge.text.raydata import CallsDatasource

    return CallsDatasource(fn, calls, name="GatherWrite")


def _runs(plan: TextPlan, count: int) -> list[Run]:
    sources = tuple(s.rows_source() for s in plan.sources)
    return cut_runs(plan.blocks, plan.order, plan.keep, sources, plan.schema, count, [s.held for s in plan.sources])


def _given(plan: TextPlan, run: Run) -> list[Any]:
    """The handles of the held chunks a run needs."""
    return [plan.sources[s].chunk_tables[k] for s, k in run.given]


# -- object storage: block parts are task results --------------------------------------------------
@dataclass
class _Parts:
    """One JSON-lines or JSON target uploaded in numbered parts, each part a run of consecutive blocks."""

    target: TargetPlan
    upload: PartUpload
    handles: list[Any] = field(default_factory=list)


def _write_through_results(plan: TextPlan, stages: list[storage.Staging], executor: Executor) -> None:
    """Blocks run at most a window ahead of the part uploads, so JSON-lines and JSON payload in flight stays
    bounded; Arrow rows for parquet, SQLite and dataset folders are kept until every block is done (in the
    object store, which spills)."""
    kinds = _kinds(plan)
    uploads, writers, folder_targets = [], [], []
    for t, st in zip(plan.targets, stages, strict=True):
        upload = None if t.is_folder or sinks.PART_KIND[t.format] != "jsonl" else st.part_upload(st.path)
        if upload is not None:
            uploads.append(_Parts(t, upload))
        elif t.is_folder:
            folder_targets.append((t, st))
        else:
            writers.append((t, st))
    keep_all = {sinks.PART_KIND[t.format] for t, _ in writers + folder_targets}
    executor.progress(f"assembling {len(plan.blocks)} block(s) of {plan.report.rows_out:,} rows")
    n, window = len(plan.blocks), 2 * executor.cpus()
    singles = _runs(plan, n)  # one block each
    metas: dict[int, Any] = {}  # block -> its (rows, Arrow bytes, JSON-lines bytes), finished but not yet grouped
    results: list[list[Any]] = [[] for _ in range(n)]  # block -> handles of its serialised forms
    running: dict[int, Any] = {}  # block -> handle of its first result, while it runs
    written: list[tuple[int, int]] = []
    start, pending_bytes, rows_before, number, seen_bytes = 0, 0, 0, 0, 0
    while len(written) < n:
        while len(running) + len(metas) < window and len(written) + len(metas) + len(running) < n:
            i = len(written) + len(metas) + len(running)
            args = (singles[i], kinds, *_given(plan, singles[i]))
            first, *rest = executor.submit(tasks.block_results, *args, num_returns=1 + len(kinds))
            running[i], results[i] = first, rest
        i, meta = _first_done(executor, running)
        metas[i] = meta
        while len(written) in metas:  # group the blocks in order
            rows, nbytes, size = metas.pop(len(written))
            written.append((rows, nbytes))
            pending_bytes, seen_bytes = pending_bytes + size, seen_bytes + size
            part_bytes = max(MIN_PART_BYTES, seen_bytes * n // (len(written) * MAX_PARTS))  # estimated from so far
            if uploads and pending_bytes >= part_bytes and len(written) < n:
                number += 1
                _send_parts(plan, uploads, results, kinds, executor, (start, len(written)), number, rows_before)
                rows_before += sum(r for r, _ in written[start:])
                start, pending_bytes = len(written), 0
                if "jsonl" not in keep_all:
                    _forget(results, kinds, "jsonl", range(start))
                for p in uploads:  # parts wait for their uploads no more than a window ahead either
                    if len(p.handles) > window:
                        executor.get(p.handles[-window - 1])
    _check_rows(plan, written)
    if uploads:
        _send_parts(plan, uploads, results, kinds, executor, (start, n), number + 1, rows_before, last=True)
    executor.progress(f"writing {len(plan.targets)} target(s)")
    handles = []
    for t, st in writers:
        existing = st.target if t.existing_db else None
        blocks = [r[kinds.index(sinks.PART_KIND[t.format])] for r in results]
        handles.append(
            executor.submit(tasks.write_target_from_blocks, t, st.fs, st.path, existing, plan.schema, *blocks)
        )
    folder_jobs = []
    for t, st in folder_targets:
        ranges = _shard_ranges(t, st, written)
        jobs = []
        for s, (lo, hi) in enumerate(ranges):
            spans = folders.parts_for([r for r, _ in written], lo, hi, str)
            tables = [results[int(k)][kinds.index("arrow")] for k, _, _ in spans]
            out = folders.shard_path(t.format, st.path, t.split, s, len(ranges))
            args = (t.format, None, spans, lo, hi, st.fs, out, plan.schema, *tables)
            jobs.append(executor.submit(tasks.write_shard, *args))
        folder_jobs.append((t, st, jobs))
    for p in uploads:
        p.upload.finish(executor.get(p.handles))
    executor.get(handles)
    _finish_folders(plan, folder_jobs, written, executor)


def _first_done(executor: Executor, running: dict[int, Any]) -> tuple[int, Any]:
    """(block, first result) of a running block that has finished."""
    blocks = list(running)
    position, value = next(executor.as_completed([running[b] for b in blocks]))
    del running[blocks[position]]
    return blocks[position], value


def _send_parts(
    plan: TextPlan,
    uploads: list[_Parts],
    results: list[list[Any]],
    kinds: list[str],
    executor: Executor,
    span: tuple[int, int],
    number: int,
    rows_before: int,
    *,
    last: bool = False,
) -> None:
    """Part `number` of every JSON-lines and JSON upload: blocks [span) as one part, sent by its own task."""
    bodies = [results[k][kinds.index("jsonl")] for k in range(*span)]
    for p in uploads:
        args = (p.upload, number, p.target.format, rows_before > 0, number == 1, last, *bodies)
        p.handles.append(executor.submit(tasks.upload_part, *args))


def _forget(results: list[list[Any]], kinds: list[str], kind: str, blocks: range) -> None:
    """Drop the driver's handles of results no task will need again, so the object store may free them."""
    for k in blocks:
        if results[k]:
            results[k][kinds.index(kind)] = None


# -- shared ----------------------------------------------------------------------------------------
def _kinds(plan: TextPlan) -> list[str]:
    return sorted({sinks.PART_KIND[t.format] for t in plan.targets})


def _check_rows(plan: TextPlan, written: list[tuple[int, int]]) -> None:
    total = sum(rows for rows, _ in written)
    if total != plan.report.rows_out:
        raise RuntimeError(f"blocks wrote {total} rows, the plan expected {plan.report.rows_out}")


def _shard_ranges(t: TargetPlan, st: storage.Staging, written: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The shards of a dataset folder, cut from the rows and Arrow bytes the blocks made; its data folder made."""
    if t.format == "hf":
        st.fs.makedirs(storage.join(st.path, "data"), exist_ok=True)
    else:
        st.fs.makedirs(st.path, exist_ok=True)
    return folders.shard_ranges(sum(r for r, _ in written), sum(b for _, b in written), t.max_shard_size)


def _finish_folders(
    plan: TextPlan,
    folder_jobs: list[tuple[TargetPlan, storage.Staging, list[Any]]],
    written: list[tuple[int, int]],
    executor: Executor,
) -> None:
    """Each dataset folder's metadata, once its shards are written."""
    rows, nbytes = sum(r for r, _ in written), sum(b for _, b in written)
    for t, st, shard_handles in folder_jobs:
        shards = executor.get(shard_handles)
        folders.write_metadata(t.format, st.fs, st.path, features_of(plan.schema), t.split, rows, nbytes, shards)
