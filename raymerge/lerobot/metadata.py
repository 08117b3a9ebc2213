"""One output dataset's metadata files (info, episodes, tasks, stats), built column by column.

What the write tasks return (per-episode stats arrays, video placements) stays in numpy arrays until it
becomes Arrow columns: the driver never turns thousands of episodes into nested dicts, and the files can be
written as soon as the tasks they depend on are done (whole-file video copies are placed by the plan).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

import numpy as np
import pyarrow as pa

from raymerge import storage
from raymerge.lerobot import data, meta, videos
from raymerge.lerobot.layout import Layout
from raymerge.lerobot.plan import Output
from raymerge.lerobot.stats import MOMENTS, Summary, column_values, merge_all

STATS_CHUNK = 4096  # episodes of per-episode stats turned into Arrow at a time


@dataclass
class Collected:
    """What the tasks of one output dataset returned: stats pieces and, per camera, each episode's
    (from, to) timestamps (NaN until its video is placed).

    Data results are taken in the order their tasks were submitted, whatever order they finish in: the same
    inputs always give the same stats.json to the last bit, and the per-episode stats arrive in episode order,
    so they become the episodes table's stats columns chunk by chunk, never all held as arrays at once."""

    summaries: dict[str, Summary] = field(default_factory=dict)
    early: dict[int, list[data.DataResult]] = field(default_factory=dict)  # by task number, not taken yet
    merged: int = 0  # data tasks taken so far
    pending: list[data.EpisodeStats] = field(default_factory=list)  # per-episode stats not in chunks yet
    shape: tuple[tuple[str, ...], list[tuple[str, int, int]], int] | None = None  # stat names, features, dims
    numeric: dict[tuple[str, str], list[pa.Array]] = field(default_factory=dict)  # (feature, stat) -> chunks
    numeric_rows: int = 0  # episodes the chunks cover
    placements: dict[str, np.ndarray] = field(default_factory=dict)
    video_stats: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)
    reencoded: set[int] = field(default_factory=set)
    copied: int = 0
    files: list[str] = field(default_factory=list)

    @classmethod
    def planned(cls, layout: Layout) -> Collected:
        """Placements known before any task runs: whole-file copies keep the source's timestamps."""
        got = cls()
        for job in layout.video_jobs:
            got.placements.setdefault(job.key, np.full((len(layout.episodes), 2), np.nan))
            if job.is_copy:
                got._place(job.key, videos.copy_placements(job.runs[0]))
        return got

    def _place(self, key: str, placements: dict[int, tuple[float, float]]) -> None:
        if placements:
            self.placements[key][list(placements)] = list(placements.values())

    def add_data(self, task: int, results: list[data.DataResult]) -> None:
        self.early[task] = results
        while self.merged in self.early:
            for r in self.early.pop(self.merged):
                merge_all(self.summaries, r.summaries)
                self._add_episode_stats(r.episode_stats)
                self.files.append(r.path)
            self.merged += 1

    def _add_episode_stats(self, block: data.EpisodeStats) -> None:
        if len(block.episodes):
            self.pending.append(block)
            if int(block.episodes[-1]) + 1 - self.numeric_rows >= STATS_CHUNK:  # the next chunk's episodes
                self.flush_stats()

    def flush_stats(self, end: int = 0) -> None:
        """Pending per-episode stats into the next chunk of every stats column, up to episode `end` at
        least: one chunk for many data results (a v2.1 output has one per episode), nulls for episodes
        without rows."""
        if self.pending:
            self.shape = (self.pending[0].names, self.pending[0].columns, self.pending[0].values.shape[2])
        if self.shape is None:
            return
        names, columns, dims = self.shape
        first = self.numeric_rows
        end = max(end, int(self.pending[-1].episodes[-1]) + 1) if self.pending else end
        if end <= first:
            return
        values = np.zeros((end - first, len(names), dims))
        present = np.zeros(end - first, dtype=bool)
        for block in self.pending:
            at = block.episodes - first
            if at[0] < 0 or at[-1] >= len(present) or (np.diff(at) <= 0).any() or present[at].any():
                raise AssertionError(f"episode stats out of order: {block.episodes[:10]} after episode {first}")
            values[at] = block.values
            present[at] = True
        mask = None if present.all() else pa.array(~present)
        for key, a, b in columns:
            for i, name in enumerate(names):
                rows = values[:, i, a : a + 1 if name == "count" else b]
                self.numeric.setdefault((key, name), []).append(_lists(rows, name, mask))
        self.numeric_rows, self.pending = end, []

    def add_videos(self, results: list[videos.VideoResult]) -> None:
        for r in results:
            self._place(r.key, r.placements)
            for ep, stats in r.stats.items():
                self.video_stats.setdefault(ep, {})[r.key] = stats
            self.reencoded.update(r.reencoded)
            self.copied += r.copied
            self.files.append(r.path)


def _stat_type(name: str) -> pa.DataType:
    """What pyarrow infers for LeRobot's stats lists: counts are integers."""
    return pa.list_(pa.int64() if name == "count" else pa.float64())


def _lists(rows: np.ndarray, name: str, mask: pa.Array | None = None) -> pa.Array:
    """(n, k) values of one stat as a list column of its type."""
    n, k = rows.shape
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    values = pa.array(np.ascontiguousarray(rows).reshape(-1)).cast(_stat_type(name).value_type)
    return pa.ListArray.from_arrays(offsets, values, mask=mask)


def numeric_columns(got: Collected, n: int) -> dict[tuple[str, str], pa.ChunkedArray]:
    """Each numeric feature's per-episode stats as one column per (feature, stat); null for an episode
    without rows."""
    got.flush_stats(n)
    return {k: pa.chunked_array(chunks, _stat_type(k[1])) for k, chunks in got.numeric.items()}


def visual_table(sources: list[meta.Source], out: Output, got: Collected, recompute: bool) -> pa.Table:
    """Image/video stats per output episode as `stats/<feature>/<stat>` columns: the sources' stored ones
    (taken from their tables, never Python objects), or the decoded ones of the written videos."""
    by_position = {s.position: s.visual for s in sources}
    parts = [
        by_position[source].take([e.episode.row for e in run])
        for source, run in groupby(out.layout.episodes, key=lambda e: e.episode.source)
    ]
    table = pa.concat_tables(parts, promote_options="permissive") if parts else meta.NO_VISUAL.empty_table()
    if recompute and got.video_stats:
        decoded = pa.Table.from_pylist([meta.flat_stats(got.video_stats.get(e.index, {})) for e in out.layout.episodes])
        replaced = {meta.stat_of(c)[0] for c in decoded.column_names}
        table = table.select([c for c in table.column_names if not meta.is_stat_of(c, replaced)])
        for c in decoded.column_names:
            table = table.append_column(c, decoded[c])
    return table


def pooled_visual(values: dict[str, pa.Array | pa.ChunkedArray]) -> dict[str, Any] | None:
    """One image/video feature's stats over all episodes, pooled from theirs (None unless every episode has
    min, max, mean, std and count)."""
    if any(name not in values or values[name].null_count for name in MOMENTS) or not len(values["count"]):
        return None
    shape = np.asarray(values["mean"][0].as_py()).shape
    rows = {name: column_values(values[name]) for name in MOMENTS}
    pooled = Summary.pooled(shape, rows["count"][:, 0], rows["mean"], rows["std"], rows["min"], rows["max"])
    return pooled.to_stats(with_quantiles=False)


def stats_columns(
    sources: list[meta.Source], out: Output, got: Collected, recompute: bool
) -> tuple[dict[tuple[str, str], Any], dict[str, Any]]:
    """Per-episode stats as columns in feature order, keyed (feature, stat); and stats.json."""
    numeric = numeric_columns(got, len(out.layout.episodes))
    visual = visual_table(sources, out, got, recompute)
    columns: dict[tuple[str, str], Any] = {}
    overall: dict[str, Any] = {}
    for key in out.info["features"]:
        if key in got.summaries:
            overall[key] = got.summaries[key].to_stats(with_quantiles=True)
            columns |= {k: v for k, v in numeric.items() if k[0] == key}
        else:
            mine = {meta.stat_of(c)[1]: visual[c] for c in visual.column_names if meta.is_stat_of(c, {key})}
            if (pooled := pooled_visual(mine)) is not None:
                overall[key] = pooled
            columns |= {(key, name): values for name, values in mine.items()}
    return columns, overall


def _num(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def write(
    sources: list[meta.Source], out: Output, got: Collected, fs: Any, root: str, options: Any, recompute: bool
) -> list[str]:
    """info, episodes, tasks and stats of one output dataset; returns the paths written (relative)."""
    layout = out.layout
    version = layout.version
    stats, overall = stats_columns(sources, out, got, recompute)
    video_keys = meta.video_keys(out.info["features"])
    n_eps = len(layout.episodes)
    info: dict[str, Any] = {
        "codebase_version": version,
        "robot_type": out.info["robot_type"],
        "total_episodes": n_eps,
        "total_frames": layout.frames,
        "total_tasks": len(layout.tasks),
    }
    written = [meta.INFO, meta.STATS]
    if version == meta.V21:
        info |= {
            "total_videos": n_eps * len(video_keys),
            "total_chunks": math.ceil(n_eps / options.chunks_size),
            "chunks_size": options.chunks_size,
        }
        meta.write_jsonl(
            fs,
            storage.join(root, meta.V21_EPISODES),
            [
                {"episode_index": e.index, "tasks": list(e.episode.tasks), "length": e.episode.length}
                for e in layout.episodes
            ],
        )
        meta.write_jsonl(
            fs,
            storage.join(root, meta.V21_EPISODES_STATS),
            (
                {"episode_index": e.index, "stats": s}
                for e, s in zip(layout.episodes, _v21_stats(stats, n_eps), strict=True)
            ),
        )
        meta.write_jsonl(
            fs, storage.join(root, meta.V21_TASKS), [{"task_index": i, "task": t} for i, t in enumerate(layout.tasks)]
        )
        written += [meta.V21_EPISODES, meta.V21_EPISODES_STATS, meta.V21_TASKS]
        paths = {"data_path": meta.V21_DATA_PATH, "video_path": meta.V21_VIDEO_PATH if video_keys else None}
    else:
        info |= {
            "chunks_size": options.chunks_size,
            "data_files_size_in_mb": _num(options.data_files_size_in_mb),
            "video_files_size_in_mb": _num(options.video_files_size_in_mb),
        }
        written += write_v30_episodes(v30_episodes(out, got, stats), fs, root, options)
        meta.write_parquet(fs, storage.join(root, meta.V30_TASKS), meta.tasks_table(layout.tasks))
        written.append(meta.V30_TASKS)
        paths = {"data_path": meta.V30_DATA_PATH, "video_path": meta.V30_VIDEO_PATH if video_keys else None}
    info |= {"fps": out.info["fps"], "splits": {"train": f"0:{n_eps}"}, **paths, "features": out.info["features"]}
    meta.write_json(fs, storage.join(root, meta.STATS), overall)
    meta.write_json(fs, storage.join(root, meta.INFO), info)
    return written


STATS_BLOCK = 512  # episodes turned into JSON rows at a time


def _v21_stats(stats: dict[tuple[str, str], Any], n: int) -> Iterator[dict[str, dict[str, Any]]]:
    """`episodes_stats.jsonl`'s stats per episode (moments only), a block of episodes at a time."""
    kept = [(key, name) for key, name in stats if name in MOMENTS]
    for start in range(0, n, STATS_BLOCK):
        block = [stats[k].slice(start, STATS_BLOCK).to_pylist() for k in kept]
        for i in range(min(STATS_BLOCK, n - start)):
            row: dict[str, dict[str, Any]] = {}
            for (key, name), values in zip(kept, block, strict=True):
                if values[i] is not None:
                    row.setdefault(key, {})[name] = values[i]
            yield row


def v30_episodes(out: Output, got: Collected, stats: dict[tuple[str, str], Any]) -> pa.Table:
    """The v3.0 episodes table: every column LeRobot writes, one row per output episode."""
    eps = out.layout.episodes
    frame_from = np.fromiter((e.frame_from for e in eps), dtype=np.int64, count=len(eps))
    lengths = np.fromiter((e.episode.length for e in eps), dtype=np.int64, count=len(eps))
    data_slots = np.array([e.data for e in eps], dtype=np.int64).reshape(-1, 2)
    columns: dict[str, pa.Array] = {
        "episode_index": pa.array(np.arange(len(eps), dtype=np.int64)),
        "tasks": pa.array([list(e.episode.tasks) for e in eps], pa.list_(pa.string())),
        "length": pa.array(lengths),
        "data/chunk_index": pa.array(data_slots[:, 0]),
        "data/file_index": pa.array(data_slots[:, 1]),
        "dataset_from_index": pa.array(frame_from),
        "dataset_to_index": pa.array(frame_from + lengths),
    }
    for key, placed in got.placements.items():
        if np.isnan(placed).any():
            raise AssertionError(f"{key}: episodes {np.flatnonzero(np.isnan(placed[:, 0]))[:10]} were not placed")
        slots = np.array([e.videos[key] for e in eps], dtype=np.int64).reshape(-1, 2)
        columns |= {
            f"videos/{key}/chunk_index": pa.array(slots[:, 0]),
            f"videos/{key}/file_index": pa.array(slots[:, 1]),
            f"videos/{key}/from_timestamp": pa.array(placed[:, 0]),
            f"videos/{key}/to_timestamp": pa.array(placed[:, 1]),
        }
    columns |= {f"stats/{key}/{name}": values for (key, name), values in stats.items()}
    return pa.table(columns)


def write_v30_episodes(table: pa.Table, fs: Any, root: str, options: Any) -> list[str]:
    """The episodes table in files of about `data_files_size_in_mb`, in chunk folders."""
    n_files = max(1, math.ceil(table.nbytes / (options.data_files_size_in_mb * 1024**2)))
    bounds = np.linspace(0, table.num_rows, n_files + 1).astype(int)
    written = []
    for n in range(n_files):
        chunk, file = divmod(n, options.chunks_size)
        part = table.slice(bounds[n], bounds[n + 1] - bounds[n])
        part = part.append_column("meta/episodes/chunk_index", pa.array([chunk] * part.num_rows, pa.int64()))
        part = part.append_column("meta/episodes/file_index", pa.array([file] * part.num_rows, pa.int64()))
        rel = meta.V30_EPISODES_PATH.format(chunk_index=chunk, file_index=file)
        meta.write_parquet(fs, storage.join(root, rel), part)
        written.append(rel)
    return written
