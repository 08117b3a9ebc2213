"""`execute` of a WebDataset plan: one writer task per output shard into staging, Energon metadata beside them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from raymerge.executor import Executor
from raymerge.report import Report
from raymerge.storage import Staging
from raymerge.webdataset import energon, layout, tasks
from raymerge.webdataset.plan import WebDatasetPlan

SHARDS_PER_CPU = 16  # from this many output shards per core, three writers run per two cores


def writer_cpus(shards: int, cpus: int) -> float:
    """Cores each writer task asks for. A writer waits on its direct writes about a third of its time, so
    three writers per two cores keep both the cores and the disk busy (10^7 tiny-member keys on 2 cores:
    the write phase 31.6 s -> 29.6 s; four per two cores were slower than two). Each extra writer is a
    worker process to start, which only many shards pay back: fewer get one writer per core."""
    return 2 / 3 if shards >= SHARDS_PER_CPU * cpus else 1


def execute(plan: WebDatasetPlan, staging: Staging, executor: Executor) -> Report:
    """One writer task per output shard (range reads from the inputs); `index.sqlite` filled by an actor that
    takes each shard's index rows, in shard order, as soon as that shard is written (from the writer, not via
    the driver), while the other writers run."""
    out = plan.config.output
    fs, root = staging.fs, staging.path
    specs = plan.output_shards
    executor.progress(f"writing {len(specs)} shard(s) of {plan.report.rows_out:,} samples")
    index = executor.actor(energon.IndexBuilder, fs, root) if out.energon else None
    pieces = _cut_chunks(executor, plan.chunks, [p for spec in specs for p in spec.pieces])
    shards, filesystems = executor.put(plan.shards), executor.put(plan.filesystems)  # once, not per task
    summaries, added = [], []
    cpus = writer_cpus(len(specs), executor.cpus())
    for spec in specs:
        own = [pieces.pop(p) for p in spec.pieces]
        summary, rows = executor.submit(
            tasks.write_output_shard,
            spec,
            shards,
            filesystems,
            fs,
            root,
            out.mtime,
            plan.renumber_width,
            index is not None,
            *own,
            num_returns=2,
            num_cpus=cpus,
        )
        summaries.append(summary)
        if index is not None:
            added.append(executor.call(index, "add", spec.index, rows))  # actor calls run in submission order
    written = dict(executor.as_completed(summaries, label="writing shards", sizes=[s.nbytes for s in specs]))
    names = [s.name for s in specs]
    files = [f for n in names for f in (n, n + energon.IDX_SUFFIX)]
    if index is not None:
        executor.progress("writing Energon metadata (.nv-meta)")
        counts = {spec.name: written[i]["samples"] for i, spec in enumerate(specs)}
        split = layout.split_parts(names, out.split_ratio)
        files += energon.write_meta(fs, root, counts, split, out.sample_type, out.field_map)
        executor.get(added)  # a failed insert fails the run, never a short index
        files += executor.get(executor.call(index, "finish"))
    report = plan.report
    report.status = "ok"
    report.files_written = files
    report.details["tar_bytes"] = sum(w["bytes"] for w in written.values())
    return report


def _cut_chunks(
    executor: Executor, chunks: Sequence[Any], wanted: Sequence[tuple[int, int, int]]
) -> dict[tuple[int, int, int], Any]:
    """Handles of the (chunk, first row, end row) pieces: each chunk is read once, and each writer gets
    only its own rows rather than every chunk it overlaps."""
    by_chunk: dict[int, list[tuple[int, int]]] = {}
    for c, a, b in wanted:
        by_chunk.setdefault(c, []).append((a, b))
    out = {}
    for c, bounds in by_chunk.items():
        handles = executor.submit(tasks.cut_chunk, chunks[c], bounds, num_returns=len(bounds))
        for (a, b), handle in zip(bounds, [handles] if len(bounds) == 1 else handles, strict=True):
            out[(c, a, b)] = handle
    return out
