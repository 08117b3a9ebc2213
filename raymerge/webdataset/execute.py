"""`execute` of a WebDataset plan: one writer task per output shard into staging, Energon metadata beside them."""

from __future__ import annotations

from typing import Any

from raymerge.executor import Executor
from raymerge.report import Report
from raymerge.storage import Staging
from raymerge.webdataset import energon, layout, tasks
from raymerge.webdataset.plan import WebDatasetPlan
from raymerge.webdataset.sources import ShardList

SHARDS_PER_CPU = 16  # from this many output shards per core, three writers run per two cores
WRITERS_AHEAD = 4  # writer tasks submitted per core at a time: enough to keep the cores fed; few enough
# that shards are written about in order, as the index actor takes them (Ray keeps no submission order:
# unbounded, the writers of one chunk ran last at 10^7 keys, and the actor took their backlog after them)


def writer_cpus(shards: int, cpus: int) -> float:
    """Cores each writer task asks for. A writer waits on its direct writes about a third of its time, so
    three writers per two cores keep both the cores and the disk busy (10^7 tiny-member keys on 2 cores:
    the write phase 31.6 s -> 29.6 s; four per two cores were slower than two). Each extra writer is a
    worker process to start, which only many shards pay back: fewer get one writer per core."""
    return 2 / 3 if shards >= SHARDS_PER_CPU * cpus else 1


def execute(plan: WebDatasetPlan, staging: Staging, executor: Executor) -> Report:
    """One writer task per output shard, given the ordered chunks its rows are in (on Ray, a writer goes where
    its chunk is: mapped there, not copied); payload by range reads from the inputs. `index.sqlite` is
    filled by an actor that takes each shard's index rows, in shard order, as soon as that shard is
    written (from the writer, not via the driver), while the other writers run."""
    out = plan.config.output
    fs, root = staging.fs, staging.path
    specs = plan.output_shards
    executor.progress(f"writing {len(specs)} shard(s) of {plan.report.rows_out:,} samples")
    index = executor.actor(energon.IndexBuilder, fs, root) if out.energon else None
    shards, filesystems = executor.put(ShardList(plan.shards)), executor.put(plan.filesystems)  # once, not per task
    added: list[Any] = []

    def hand_to_index(i: int, handles: list[Any]) -> None:
        if index is not None:  # actor calls run in submission order, each once its shard's rows exist
            added.append(executor.call(index, "add", specs[i].index, handles[1]))

    calls = [
        (spec, shards, filesystems, fs, root, out.mtime, plan.renumber_width, index is not None, *chunks)
        for spec in specs
        for chunks in [[plan.chunks[c] for c in tasks.chunks_of(spec)]]
    ]
    cpus = writer_cpus(len(specs), executor.cpus())
    written = dict(
        executor.map(
            tasks.write_output_shard,
            calls,
            label="writing shards",
            ordered=False,
            max_in_flight=WRITERS_AHEAD * executor.cpus(),
            num_cpus=cpus,
            num_returns=2,
            submitted=hand_to_index,
            sizes=[s.nbytes for s in specs],
        )
    )
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
