"""Write a planned text merge into staging.

One task per block assembles its rows from the scanned chunks it needs and writes its parts; one
task per target then streams the parts in order into its file. Exports are staged like the main
output and committed just before it, so a failed run commits none of them.
"""

from __future__ import annotations

from typing import Any

from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.executor import Executor
from raymerge.report import Report
from raymerge.text import sinks, tasks
from raymerge.text.blocks import SourceSlice, chunks_for
from raymerge.text.combine import Block
from raymerge.text.plan import TextPlan


def execute(plan: TextPlan, staging: storage.Staging, executor: Executor) -> Report:
    """Write the output and every export; the exports are committed here, the output by the core."""
    report = plan.report
    exports = [
        storage.Staging(
            t.path, t.storage_options, overwrite=t.overwrite, is_file=True, allow_existing=t.format == "sqlite"
        )
        for t in plan.targets[1:]
    ]
    opened: list[storage.Staging] = []
    try:
        for e in exports:
            opened.append(e.open())
        part_dir = storage.join(staging.dir, "parts")
        staging.fs.makedirs(part_dir, exist_ok=True)
        _write_blocks(plan, staging.fs, part_dir, executor)
        executor.progress(f"writing {len(plan.targets)} file(s)")
        stages = [staging, *opened]
        executor.get(
            [
                executor.submit(
                    tasks.write_target,
                    t,
                    staging.fs,
                    part_dir,
                    len(plan.blocks),
                    st.fs,
                    st.path,
                    st.target if t.existing_db else None,
                )
                for t, st in zip(plan.targets, stages, strict=True)
            ]
        )
        staging.fs.rm(part_dir, recursive=True)
        for e in opened:
            e.commit()
    finally:
        for e in opened:
            e.abort()
    report.files_written = [storage.basename(staging.target)] + [e.target_url for e in opened]
    return report


def _write_blocks(plan: TextPlan, fs: AbstractFileSystem, part_dir: str, executor: Executor) -> None:
    """Every block's parts, written in parallel; refuses a total that differs from the plan's."""
    kinds = sorted({sinks.PART_KIND[t.format] for t in plan.targets})
    executor.progress(f"assembling {len(plan.blocks)} block(s) of {plan.report.rows_out:,} pairs")
    handles = [
        executor.submit(tasks.write_block, *_block_arguments(plan, b, fs, part_dir, i, kinds))
        for i, b in enumerate(plan.blocks)
    ]
    written = sum(rows for _, rows in executor.as_completed(handles, label="blocks"))
    if written != plan.report.rows_out:
        raise RuntimeError(f"blocks wrote {written} pairs, the plan expected {plan.report.rows_out}")


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
    return (plan.order[b.start : b.stop], keep, slices, fs, part_dir, index, kinds, *tables)
