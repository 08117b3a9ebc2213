"""Rewrite episode parquet with new indices: each output data file gathered from its source files (only the
wanted episodes' rows), re-indexed with pyarrow compute — `episode_index`, `index` and `task_index` replaced,
everything else (frame_index, timestamp, image bytes) carried as is — written once, and its stats computed
on the way (`stats.per_episode`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.lerobot import ranged
from raymerge.lerobot.arrays import runs
from raymerge.lerobot.layout import DataJob
from raymerge.lerobot.stats.per_episode import data_stats
from raymerge.lerobot.stats.summary import Summary


@dataclass
class DataResult:
    """What writing one output data file gave: its rows, and the mergeable summaries of its features."""

    path: str
    rows: int
    episodes: int  # episodes with rows, each a row of the task's episode stats file
    summaries: dict[str, Summary]


@dataclass
class DataWriteContext:
    """What every data task of one output dataset shares (stored once, not once per task): the sources'
    filesystems, task maps and schema, where to write, and which stats to compute."""

    fs_of: dict[int, AbstractFileSystem]  # each source's filesystem, by position
    task_maps: dict[int, list[int]]
    schema: pa.Schema
    fs: AbstractFileSystem
    root: str
    features: dict[str, tuple[int, ...]]  # numeric features and their shapes
    with_quantiles: bool
    sizes: dict[tuple[int, str], int] = field(default_factory=dict)  # of the source files, from their listings


def _replace(table: pa.Table, name: str, values: np.ndarray) -> pa.Table:
    """The table with column `name` replaced by `values`, cast to the column's type."""
    i = table.schema.get_field_index(name)
    fld = table.schema.field(i)
    return table.set_column(i, fld, pa.array(values).cast(fld.type))


def episode_slices(table: pa.Table) -> dict[int, tuple[int, int]]:
    """Each episode's (offset, rows) in a table that holds every episode's rows together, as LeRobot writes them;
    empty when some episode's rows are not contiguous."""
    eps = table["episode_index"].to_numpy()
    starts, ends = runs(eps)
    found = {int(eps[s]): (int(s), int(e - s)) for s, e in zip(starts, ends, strict=True)}
    return found if len(found) == len(starts) else {}


def reindex(
    table: pa.Table,
    src_episode: int,
    episode: int,
    frame_from: int,
    task_map: np.ndarray,
    slices: dict[int, tuple[int, int]],
) -> pa.Table:
    """One episode's rows with its new episode_index, global index (from `frame_from`) and task_index; sliced
    by `episode_slices` when it found them, filtered otherwise."""
    if slices:
        rows = table.slice(*slices.get(src_episode, (0, 0)))
    else:
        rows = table.filter(pc.equal(table["episode_index"], src_episode))
    n = rows.num_rows
    rows = _replace(rows, "episode_index", np.full(n, episode, dtype=np.int64))
    rows = _replace(rows, "index", np.arange(frame_from, frame_from + n, dtype=np.int64))
    old = rows["task_index"].to_numpy()
    return _replace(rows, "task_index", task_map[old].astype(np.int64))


def _read(fs: AbstractFileSystem, path: str, episodes: np.ndarray, size: int | None) -> pa.Table:
    """The rows of the given episodes of one source file: only the row groups that can hold them, read by
    range."""
    with ranged.open_input(fs, path, size) as f:
        file = pq.ParquetFile(f, pre_buffer=True)
        groups = row_groups_with(file, int(episodes.min()), int(episodes.max())) if len(episodes) else []
        table = file.read_row_groups(groups) if groups else file.schema_arrow.empty_table()
    return table.filter(pc.is_in(table["episode_index"], pa.array(episodes, type=table["episode_index"].type)))


def row_groups_with(file: pq.ParquetFile, low: int, high: int) -> list[int]:
    """The row groups whose `episode_index` statistics overlap [low, high] (all of them without statistics)."""
    meta = file.metadata
    leaves = [meta.schema.column(j).path for j in range(meta.num_columns)]
    column = leaves.index("episode_index") if "episode_index" in leaves else -1
    groups = []
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(column).statistics if column >= 0 else None
        if stats is None or not stats.has_min_max or (stats.min <= high and stats.max >= low):
            groups.append(i)
    return groups


def build_table(
    job: DataJob,
    fs_of: dict[int, AbstractFileSystem],
    task_maps: dict[int, list[int]],
    schema: pa.Schema,
    sizes: dict[tuple[int, str], int] | None = None,
) -> pa.Table:
    """The output file's table: its episodes gathered from their sources (each source file read once per run)."""
    pieces = []
    known = sizes or {}
    for run in job.runs:
        table = _read(fs_of[run.source], run.path, run.src_episodes, known.get((run.source, run.path)))
        task_map = np.asarray(task_maps[run.source], dtype=np.int64)
        slices = episode_slices(table)
        frames = (run.frame_from + np.cumsum(run.lengths) - run.lengths).tolist()
        for k, (src_episode, frame_from) in enumerate(zip(run.src_episodes.tolist(), frames, strict=True)):
            piece = reindex(table, src_episode, run.first + k, frame_from, task_map, slices)
            pieces.append(piece.select(schema.names).cast(schema))
    return pa.concat_tables(pieces)


def write_data_file(job: DataJob, context: DataWriteContext) -> tuple[DataResult, pa.Table]:
    """Write one output file; its result and its episodes' exact stats (a row per episode)."""
    table = build_table(job, context.fs_of, context.task_maps, context.schema, context.sizes)
    path = storage.join(context.root, job.path)
    context.fs.makedirs(storage.parent(path), exist_ok=True)
    with context.fs.open(path, "wb") as f:
        pq.write_table(table, f, compression="snappy")
    per_episode, summaries = data_stats(table, context.features, context.with_quantiles)
    return DataResult(job.path, table.num_rows, per_episode.num_rows, summaries), per_episode
