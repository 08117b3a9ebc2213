"""Write a planned text merge into staging.

One task per block assembles its rows from the scanned chunks it needs and writes its parts; then, all at
once, one task per target file streams the parts in order into it, and one task per shard of a dataset
folder (`hf`, `save_to_disk`) writes that shard. Exports are staged like the main output and committed just
before it, so a failed run commits none of them.
"""

from __future__ import annotations

from typing import Any

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


def execute(plan: TextPlan, staging: storage.Staging, executor: Executor) -> Report:
    """Write the output and every export; the exports are committed here, the output by the core."""
    report = plan.report
    opened: list[storage.Staging] = []
    # Parts are intermediate files: beside a file output's staged file, in scratch for a folder output (whose
    # staging holds exactly the output; on object storage, uploads of its final keys).
    part_dir = storage.join(staging.scratch if plan.targets[0].is_folder else staging.dir, "parts")
    try:
        for t in plan.targets[1:]:
            opened.append(t.staging().open())
        staging.fs.makedirs(part_dir, exist_ok=True)
        written = _write_blocks(plan, staging.fs, part_dir, executor)
        executor.progress(f"writing {len(plan.targets)} target(s)")
        stages = [staging, *opened]
        handles, folder_jobs = [], []
        for t, st in zip(plan.targets, stages, strict=True):
            if t.is_folder:
                folder_jobs.append(_submit_shards(plan, t, st, staging.fs, part_dir, written, executor))
            else:
                existing = st.target if t.existing_db else None
                args = (t, staging.fs, part_dir, len(plan.blocks), st.fs, st.path, existing, plan.schema)
                handles.append(executor.submit(tasks.write_target, *args))
        executor.get(handles)
        for t, st, shard_handles in folder_jobs:
            shards = executor.get(shard_handles)
            rows, nbytes = sum(r for r, _ in written), sum(b for _, b in written)
            feats = features_of(plan.schema)
            folders.write_metadata(t.format, st.fs, st.path, feats, t.split, rows, nbytes, shards)
        staging.fs.rm(part_dir, recursive=True)
        for e in opened:
            e.commit()
    finally:
        for e in opened:
            e.abort()
    report.files_written = [storage.basename(staging.target)] + [e.target_url for e in opened]
    return report


def _submit_shards(
    plan: TextPlan,
    t: TargetPlan,
    st: storage.Staging,
    parts_fs: AbstractFileSystem,
    part_dir: str,
    written: list[tuple[int, int]],
    executor: Executor,
) -> tuple[TargetPlan, storage.Staging, list[Any]]:
    """One task per shard of a dataset folder, cut from the rows and Arrow bytes the blocks wrote."""
    part_rows = [r for r, _ in written]
    ranges = folders.shard_ranges(sum(part_rows), sum(b for _, b in written), t.max_shard_size)
    if t.format == "hf":
        st.fs.makedirs(storage.join(st.path, "data"), exist_ok=True)
    else:
        st.fs.makedirs(st.path, exist_ok=True)
    handles = []
    for i, (start, stop) in enumerate(ranges):
        parts = folders.parts_for(part_rows, start, stop, lambda k: sinks.part_path(part_dir, "arrow", k))
        out = folders.shard_path(t.format, st.path, t.split, i, len(ranges))
        args = (t.format, parts_fs, parts, start, stop, st.fs, out, plan.schema)
        handles.append(executor.submit(tasks.write_shard, *args))
    return t, st, handles


def _write_blocks(plan: TextPlan, fs: AbstractFileSystem, part_dir: str, executor: Executor) -> list[tuple[int, int]]:
    """Every block's parts, written in parallel; (rows, Arrow bytes) per block, in block order. Refuses a
    total that differs from the plan's."""
    kinds = sorted({sinks.PART_KIND[t.format] for t in plan.targets})
    executor.progress(f"assembling {len(plan.blocks)} block(s) of {plan.report.rows_out:,} rows")
    handles = [
        executor.submit(tasks.write_block, *_block_arguments(plan, b, fs, part_dir, i, kinds))
        for i, b in enumerate(plan.blocks)
    ]
    written: list[tuple[int, int]] = [(0, 0)] * len(handles)
    for i, result in executor.as_completed(handles, label="blocks"):
        written[i] = result
    total = sum(rows for rows, _ in written)
    if total != plan.report.rows_out:
        raise RuntimeError(f"blocks wrote {total} rows, the plan expected {plan.report.rows_out}")
    return written


def _block_arguments(
    plan: TextPlan, b: Block, fs: AbstractFileSystem, part_dir: str, index: int, kinds: list[str]
) -> tuple[Any, ...]:
    """The arguments of `tasks.write_block` for one block: its slice of the order and of the dedup mask,
    what it needs from each source, and the handles of only the chunks that hold those rows."""
    slices, tables = [], []
    for s, src in enumerate(plan.sources):
        picked = chunks_for(b.first[s], b.count[s], src.rows, src.chunk_starts)
        slices.append(SourceSlice(s, b.first[s], b.count[s], src.rows, tuple(src.chunk_starts[i] for i in picked)))
        tables += [src.chunk_tables[i] for i in picked]
    keep = None if plan.keep is None else plan.keep[b.start : b.stop]
    return (plan.order[b.start : b.stop], keep, slices, fs, part_dir, index, kinds, plan.schema, *tables)
