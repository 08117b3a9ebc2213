"""`execute` of a WebDataset plan: writer tasks of one or a few output shards into staging, Energon metadata beside them."""

from __future__ import annotations

from typing import Any

from raymerge.executor import Executor
from raymerge.report import Report
from raymerge.storage import Staging
from raymerge.webdataset import energon, layout, tasks
from raymerge.webdataset.plan import WebDatasetPlan
from raymerge.webdataset.sources import ShardList

SHARDS_PER_CPU = 16  # from this many output shards per core, three writers run per two cores
SHARDS_PER_WRITER = 4
WRITER_TASKS_PER_CPU = 64  # writer tasks per core at least, before a task takes more than one shard
WRITERS_AHEAD = 4  # writer tasks submitted per core at a time: enough to keep the cores fed; few enough
# that shards are written about in order, as the index actor takes them (Ray keeps no submission order:
# unbounded, the writers of one chunk ran last at 10^7 keys, and the actor took their backlog after them)


def writer_cpus(shards: int, cpus: int) -> float:
    """Cores each writer task asks for. A writer waits on its direct writes about a third of its time, so
    three writers per two cores keep both the cores and the disk busy (10^7 tiny-member keys on 2 cores:
    the write phase 31.6 s -> 29.6 s; four per two cores were slower than two). Each extra writer is a
    worker process to start, which only many shards pay back: fewer get one writer per core."""
    return 2 / 3 if shards >= SHARDS_PER_CPU * cpus else 1


def shards_per_writer(shards: int, cpus: int) -> int:
    """Output shards each writer task writes: one, up to `SHARDS_PER_WRITER` when there are many per core
    (each task costs a few ms of Ray's time to submit, start, store and hand on; a shard of 10,000 tiny
    samples takes ~15 ms to write)."""
    return max(1, min(SHARDS_PER_WRITER, shards // (WRITER_TASKS_PER_CPU * cpus)))


def _groups(specs: list[layout.OutputShard], size: int) -> list[list[layout.OutputShard]]:
    return [specs[i : i + size] for i in range(0, len(specs), size)]


def execute(plan: WebDatasetPlan, staging: Staging, executor: Executor) -> Report:
    """Writer tasks of one or a few consecutive output shards (`shards_per_writer`), each given the ordered
    chunks its rows are in (on Ray, a writer goes where its chunk is: mapped there, not copied); payload
    by range reads from the inputs. `index.sqlite` is filled by an actor: first the index of keys, from
    every chunk's keys (`tasks.chunk_keys`), then the shards' index rows, in shard order, as soon as they
    are written (from the writer, not via the driver), while the other writers run."""
    out = plan.config.output
    fs, root = staging.fs, staging.path
    specs = plan.output_shards
    executor.progress(f"writing {len(specs)} shard(s) of {plan.report.rows_out:,} samples")
    index = executor.actor(energon.IndexBuilder, fs, root) if out.energon else None
    shards, filesystems = executor.put(ShardList(plan.shards)), executor.put(plan.filesystems)  # once, not per task
    groups = _groups(specs, shards_per_writer(len(specs), executor.cpus()))
    added: list[Any] = []
    if index is not None:  # the index of keys first: it needs them all, and would otherwise follow the writers
        starts = tasks.chunk_starts(specs)
        keys = [executor.submit(tasks.chunk_keys, plan.chunks[c], s, plan.renumber_width) for c, s in starts.items()]
        added.append(executor.call(index, "keys", *keys))

    def hand_to_index(i: int, handles: list[Any]) -> None:
        if index is not None:  # actor calls run in submission order, each once its shards' rows exist
            added.append(executor.call(index, "add", groups[i][0].index, handles[1]))

    calls = [
        (group, shards, filesystems, fs, root, out.mtime, plan.renumber_width, index is not None, *chunks)
        for group in groups
        for chunks in [[plan.chunks[c] for c in tasks.chunks_of(group)]]
    ]
    cpus = writer_cpus(len(groups), executor.cpus())
    done = executor.map(
        tasks.write_output_shards,
        calls,
        label="writing shards",
        ordered=False,
        max_in_flight=WRITERS_AHEAD * executor.cpus(),
        num_cpus=cpus,
        num_returns=2,
        submitted=hand_to_index,
        sizes=[sum(s.nbytes for s in group) for group in groups],
    )
    written = {spec.index: summary for i, summaries in done for spec, summary in zip(groups[i], summaries, strict=True)}
    names = [s.name for s in specs]
    files = [f for n in names for f in (n, n + energon.IDX_SUFFIX)]
    if index is not None:
        executor.progress("writing Energon metadata (.nv-meta)")
        counts = {spec.name: written[spec.index]["samples"] for spec in specs}
        split = layout.split_parts(names, out.split_ratio)
        files += energon.write_meta(fs, root, counts, split, out.sample_type, out.field_map)
        executor.get(added)  # a failed insert fails the run, never a short index
        files += executor.get(executor.call(index, "finish"))
    report = plan.report
    report.status = "ok"
    report.files_written = files
    report.details["tar_bytes"] = sum(w["bytes"] for w in written.values())
    return report
