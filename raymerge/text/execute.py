"""Write a planned text merge into staging.

One task per block assembles its rows from the scanned chunks it needs. On local disk each block writes
its parts as files; then, all at once, one task per target file streams the parts in order into it, and
one task per shard of a dataset folder (`hf`, `save_to_disk`) writes that shard. On object storage the
blocks' serialised rows travel as task results instead of files, so no byte is uploaded twice: a JSON-lines
or JSON target is one multipart upload whose parts (>= 5 MiB each but the last, consecutive blocks
grouped) are sent by their own tasks as the blocks finish, in parallel; shards are written by their tasks
straight to their final keys; parquet and SQLite, which one writer must write in order, get every block's
Arrow rows in one task. Exports are staged like the main output and committed just before it, so a failed
run commits none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.executor import Executor
from raymerge.report import Report
from raymerge.text import folders, sinks, tasks
from raymerge.text.blocks import SourceSlice, chunks_for
from raymerge.text.combine import Block
from raymerge.text.features import features_of
from raymerge.text.plan import TextPlan
from raymerge.text.targets import TargetPlan

if TYPE_CHECKING:
    from raymerge.s3commit import PartUpload

MIN_PART_BYTES = 5 << 20  # S3's smallest part but the last
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
    """Every block's parts, written in parallel; (rows, Arrow bytes) per block, in block order. Refuses a
    total that differs from the plan's."""
    kinds = _kinds(plan)
    executor.progress(f"assembling {len(plan.blocks)} block(s) of {plan.report.rows_out:,} rows")
    handles = [
        executor.submit(tasks.write_block, *_block_arguments(plan, b, (fs, part_dir, i), kinds))
        for i, b in enumerate(plan.blocks)
    ]
    written: list[tuple[int, int]] = [(0, 0)] * len(handles)
    for i, result in executor.as_completed(handles, label="blocks"):
        written[i] = result
    _check_rows(plan, written)
    return written


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
    metas: dict[int, Any] = {}  # block -> its (rows, Arrow bytes, JSON-lines bytes), finished but not yet grouped
    results: list[list[Any]] = [[] for _ in range(n)]  # block -> handles of its serialised forms
    running: dict[int, Any] = {}  # block -> handle of its first result, while it runs
    written: list[tuple[int, int]] = []
    start, pending_bytes, rows_before, number, seen_bytes = 0, 0, 0, 0, 0
    while len(written) < n:
        while len(running) + len(metas) < window and len(written) + len(metas) + len(running) < n:
            i = len(written) + len(metas) + len(running)
            first, *rest = executor.submit(
                tasks.block_results, *_block_arguments(plan, plan.blocks[i], (), kinds), num_returns=1 + len(kinds)
            )
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


def _block_arguments(plan: TextPlan, b: Block, where: tuple[Any, ...], kinds: list[str]) -> tuple[Any, ...]:
    """The arguments of `tasks.write_block` (`where`: fs, part folder, index) or `tasks.block_results` (no
    `where`) for one block: its slice of the order and of the dedup mask, what it needs from each source, and
    the handles of only the chunks that hold those rows."""
    slices, tables = [], []
    for s, src in enumerate(plan.sources):
        picked = chunks_for(b.first[s], b.count[s], src.rows, src.chunk_starts)
        slices.append(SourceSlice(s, b.first[s], b.count[s], src.rows, tuple(src.chunk_starts[i] for i in picked)))
        tables += [src.chunk_tables[i] for i in picked]
    keep = None if plan.keep is None else plan.keep[b.start : b.stop]
    return (plan.order[b.start : b.stop], keep, slices, *where, kinds, plan.schema, *tables)
