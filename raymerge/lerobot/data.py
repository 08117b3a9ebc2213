"""Rewrite episode parquet with new indices (Ray task per batch of output files), computing stats on the way.

Each output file is gathered from its source files (only the wanted episodes' rows), re-indexed with
pyarrow compute — `episode_index`, `index` and `task_index` replaced, everything else (frame_index,
timestamp, image bytes) carried as is — written once, and summarised for the stats reduce. The exact
per-episode stats (kilobytes per episode) are written by the task itself, as the episodes metadata's
`stats/<feature>/<stat>` columns, to a scratch file: the driver only ever reads them back a chunk at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.lerobot.layout import DataJob
from raymerge.lerobot.stats import Summary, episode_stats, feature_matrix

STATS_CHUNK = 1024  # episodes of per-episode stats the driver holds at a time


@dataclass
class DataResult:
    path: str
    rows: int
    episodes: int  # episodes with rows, each a row of the task's episode stats file
    summaries: dict[str, Summary]


def stat_type(name: str) -> pa.DataType:
    """What pyarrow infers for LeRobot's stats lists: counts are integers."""
    return pa.list_(pa.int64() if name == "count" else pa.float64())


def _lists(rows: np.ndarray, name: str) -> pa.Array:
    """(n, k) values of one stat as a list column of its type."""
    n, k = rows.shape
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    values = pa.array(np.ascontiguousarray(rows).reshape(-1)).cast(stat_type(name).value_type)
    return pa.ListArray.from_arrays(offsets, values)


def _replace(table: pa.Table, name: str, values: np.ndarray) -> pa.Table:
    i = table.schema.get_field_index(name)
    fld = table.schema.field(i)
    return table.set_column(i, fld, pa.array(values).cast(fld.type))


def episode_rows(table: pa.Table) -> dict[int, tuple[int, int]]:
    """Each episode's (offset, rows) in a table that holds every episode's rows together, as LeRobot writes them;
    empty when some episode's rows are not contiguous."""
    eps = table["episode_index"].to_numpy()
    starts = np.flatnonzero(np.r_[True, eps[1:] != eps[:-1]]) if len(eps) else np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], len(eps)]
    found = {int(eps[s]): (int(s), int(e - s)) for s, e in zip(starts, ends, strict=True)}
    return found if len(found) == len(starts) else {}


def reindex(
    table: pa.Table,
    src_episode: int,
    episode: int,
    frame_from: int,
    task_map: np.ndarray,
    rows_of: dict[int, tuple[int, int]],
) -> pa.Table:
    """One episode's rows with its new episode_index, global index (from `frame_from`) and task_index."""
    if rows_of:
        rows = table.slice(*rows_of.get(src_episode, (0, 0)))
    else:
        rows = table.filter(pc.equal(table["episode_index"], src_episode))
    n = rows.num_rows
    rows = _replace(rows, "episode_index", np.full(n, episode, dtype=np.int64))
    rows = _replace(rows, "index", np.arange(frame_from, frame_from + n, dtype=np.int64))
    old = rows["task_index"].to_numpy()
    return _replace(rows, "task_index", task_map[old].astype(np.int64))


def _read(fs: AbstractFileSystem, path: str, episodes: np.ndarray) -> pa.Table:
    with fs.open(path, "rb") as f:
        table = pq.ParquetFile(f).read()
    return table.filter(pc.is_in(table["episode_index"], pa.array(episodes, type=table["episode_index"].type)))


def build_table(
    job: DataJob, fs_of: dict[int, AbstractFileSystem], task_maps: dict[int, list[int]], schema: pa.Schema
) -> pa.Table:
    """The output file's table: its episodes gathered from their sources (each source file read once per run)."""
    pieces = []
    for run in job.runs:
        table = _read(fs_of[run.source], run.path, run.src_episodes)
        task_map = np.asarray(task_maps[run.source], dtype=np.int64)
        rows_of = episode_rows(table)
        frames = (run.frame_from + np.cumsum(run.lengths) - run.lengths).tolist()
        for k, (src_episode, frame_from) in enumerate(zip(run.src_episodes.tolist(), frames, strict=True)):
            piece = reindex(table, src_episode, run.first + k, frame_from, task_map, rows_of)
            pieces.append(piece.select(schema.names).cast(schema))
    return pa.concat_tables(pieces)


def summarise(
    table: pa.Table, features: dict[str, tuple[int, ...]], with_quantiles: bool
) -> tuple[pa.Table, dict[str, Summary]]:
    """Exact per-episode stats (`episode_index` and a `stats/<feature>/<stat>` list column each, in feature
    order) and a mergeable per-file summary of every numeric feature."""
    matrix, columns = feature_matrix(table, list(features))
    eps = table["episode_index"].to_numpy()
    starts = np.flatnonzero(np.r_[True, eps[1:] != eps[:-1]]) if len(eps) else np.zeros(0, dtype=np.intp)
    names, values = episode_stats(matrix, starts, with_quantiles)
    per_episode = {"episode_index": pa.array(eps[starts].astype(np.int64))}
    for key, a, b in columns:
        for i, name in enumerate(names):
            per_episode[f"stats/{key}/{name}"] = _lists(values[:, i, a : a + 1 if name == "count" else b], name)
    return pa.table(per_episode), {key: Summary.of(matrix[a:b].T, features[key]) for key, a, b in columns}


@dataclass
class Target:
    """What every data task of one output dataset shares: sources, task maps, schema, where to write."""

    fs_of: dict[int, AbstractFileSystem]  # each source's filesystem, by position
    task_maps: dict[int, list[int]]
    schema: pa.Schema
    fs: AbstractFileSystem
    root: str
    features: dict[str, tuple[int, ...]]  # numeric features and their shapes
    with_quantiles: bool


def write_job(job: DataJob, target: Target) -> tuple[DataResult, pa.Table]:
    """One output file; its result and its episodes' stats."""
    table = build_table(job, target.fs_of, target.task_maps, target.schema)
    path = storage.join(target.root, job.path)
    target.fs.makedirs(storage.parent(path), exist_ok=True)
    with target.fs.open(path, "wb") as f:
        pq.write_table(table, f, compression="snappy")
    per_episode, summaries = summarise(table, target.features, target.with_quantiles)
    return DataResult(job.path, table.num_rows, per_episode.num_rows, summaries), per_episode


def write_batch(jobs: list[DataJob], target: Target, stats_path: str) -> list[DataResult]:
    """The output files of one task, and one file of their episodes' stats at `stats_path` (on the output's
    filesystem) if any episode has rows, in row groups of `STATS_CHUNK` episodes."""
    results, per_episode = [], []
    for job in jobs:
        result, stats = write_job(job, target)
        results.append(result)
        if stats.num_rows:
            per_episode.append(stats)
    if per_episode:
        target.fs.makedirs(storage.parent(stats_path), exist_ok=True)
        with target.fs.open(stats_path, "wb") as f:
            pq.write_table(pa.concat_tables(per_episode), f, row_group_size=STATS_CHUNK, compression="snappy")
    return results
