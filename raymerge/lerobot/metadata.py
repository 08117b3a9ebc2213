"""One output dataset's metadata files (info, episodes, tasks, stats), written a chunk of episodes at a time.

The episodes table is never whole on the driver: its numeric stats are read back from the data tasks'
scratch files `STATS_CHUNK` episodes at a time, its camera stats taken from the sources' Arrow tables for the
same episodes, its video placements are one (episodes, 2) array per camera. The files are written as soon as
the tasks they depend on are done (whole-file video copies are placed by the plan, so they do not wait).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raymerge import storage
from raymerge.lerobot import data, meta, videos
from raymerge.lerobot.layout import Layout
from raymerge.lerobot.plan import Output
from raymerge.lerobot.stats import MOMENTS, Summary, column_values, merge_all


@dataclass
class Collected:
    """What the tasks of one output dataset returned: stats summaries, the files of per-episode stats and,
    per camera, each episode's (from, to) timestamps (NaN until its video is placed).

    Data results are taken in the order their tasks were submitted, whatever order they finish in: the same
    inputs always give the same stats.json to the last bit, and the per-episode stats files are in episode
    order."""

    summaries: dict[str, Summary] = field(default_factory=dict)
    early: dict[int, tuple[list[data.DataResult], str]] = field(default_factory=dict)  # by task number
    merged: int = 0  # data tasks taken so far
    stats_files: list[str] = field(default_factory=list)
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
            got.placements.setdefault(job.key, np.full((layout.n_episodes, 2), np.nan))
            if job.is_copy:
                episodes, placed = videos.copy_placements(job.runs[0])
                got.placements[job.key][episodes] = placed
        return got

    def add_data(self, task: int, results: list[data.DataResult], stats_path: str) -> None:
        """A data task's results; `stats_path` holds its episodes' stats if any of them has rows."""
        self.early[task] = (results, stats_path)
        while self.merged in self.early:
            results, stats_path = self.early.pop(self.merged)
            for r in results:
                merge_all(self.summaries, r.summaries)
                self.files.append(r.path)
            if any(r.episodes for r in results):
                self.stats_files.append(stats_path)
            self.merged += 1

    def add_videos(self, results: list[videos.VideoResult]) -> None:
        for r in results:
            self.placements[r.key][r.episodes] = r.placements
            for ep, stats in r.stats.items():
                self.video_stats.setdefault(ep, {})[r.key] = stats
            self.reencoded.update(r.reencoded)
            self.copied += r.copied
            self.files.append(r.path)


def read_stats(fs: Any, paths: list[str]) -> Iterator[pa.RecordBatch]:
    for path in paths:
        with fs.open(path, "rb") as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=data.STATS_CHUNK)


def ranges(n: int, size: int) -> list[tuple[int, int]]:
    """Consecutive [a, b) covering n episodes, `size` at most each (one empty range for none)."""
    return [(a, min(a + size, n)) for a in range(0, n, size)] or [(0, 0)]


def aligned_stats(batches: Iterable[pa.RecordBatch], spans: list[tuple[int, int]]) -> Iterator[pa.Table | None]:
    """The per-episode stats for each span of episodes in turn, a row per episode (null for an episode
    without rows), from batches of rows in episode order; None for every span if there are none."""
    it = iter(batches)
    carry = next(it, None)
    schema = carry.schema if carry is not None else None
    for a, b in spans:
        parts = []
        while carry is not None:
            k = int(np.searchsorted(carry.column("episode_index").to_numpy(), b))
            if k:
                parts.append(carry.slice(0, k))
            if k < carry.num_rows:
                carry = carry.slice(k)
                break
            carry = next(it, None)
        yield None if schema is None else _align(pa.Table.from_batches(parts, schema), a, b)
    if carry is not None:
        raise AssertionError(f"episode stats past the last episode: {carry.column('episode_index')[:10]}")


def _align(table: pa.Table, a: int, b: int) -> pa.Table:
    at = table["episode_index"].to_numpy() - a
    if len(at) and (at[0] < 0 or (np.diff(at) <= 0).any()):
        raise AssertionError(f"episode stats out of order: {table['episode_index'][:10]} for episodes {a}..{b - 1}")
    table = table.drop_columns(["episode_index"])
    if len(at) == b - a:
        return table
    rows = np.full(b - a, -1)
    rows[at] = np.arange(len(at))
    return table.take(pa.array(rows, mask=rows < 0))


class Visual:
    """The sources' stored image/video stats for runs of output episodes, taken from their Arrow tables
    (never Python objects), in one schema for every chunk."""

    def __init__(self, sources: list[meta.Source], layout: Layout) -> None:
        self.tables = {s.position: s.visual for s in sources}
        self.layout = layout
        found, first = np.unique(layout.source, return_index=True)
        schemas = [self.tables[p].schema for p in found[np.argsort(first)].tolist()]  # in order of appearance
        self.schema = pa.unify_schemas(schemas, promote_options="permissive") if schemas else meta.NO_VISUAL

    def take(self, a: int, b: int) -> pa.Table:
        """The stats of output episodes a..b-1."""
        source, row = self.layout.source[a:b], self.layout.row[a:b]
        starts = np.flatnonzero(np.r_[True, source[1:] != source[:-1]]) if len(source) else []
        parts = [
            self.tables[int(source[i])].take(row[i:j]) for i, j in zip(starts, [*starts[1:], len(source)], strict=True)
        ]
        table = pa.concat_tables([self.schema.empty_table(), *parts], promote_options="permissive")
        return table.select(self.schema.names)


def _decoded(table: pa.Table, a: int, b: int, got: Collected) -> pa.Table:
    """The stored camera stats replaced by those of the written videos (`recompute_video_stats`)."""
    decoded = pa.Table.from_pylist([meta.flat_stats(got.video_stats.get(e, {})) for e in range(a, b)])
    replaced = {meta.stat_of(c)[0] for c in decoded.column_names}
    table = table.select([c for c in table.column_names if not meta.is_stat_of(c, replaced)])
    for c in decoded.column_names:
        table = table.append_column(c, decoded[c])
    return table


def pooled_visual(values: dict[str, pa.Array | pa.ChunkedArray]) -> Summary | None:
    """One image/video feature's stats over some episodes, pooled from theirs (None unless every episode has
    min, max, mean, std and count)."""
    if any(name not in values or values[name].null_count for name in MOMENTS) or not len(values["count"]):
        return None
    shape = np.asarray(values["mean"][0].as_py()).shape
    rows = {name: column_values(values[name]) for name in MOMENTS}
    return Summary.pooled(shape, rows["count"][:, 0], rows["mean"], rows["std"], rows["min"], rows["max"])


def stats_chunks(
    sources: list[meta.Source], out: Output, got: Collected, fs: Any, recompute: bool, pooled: dict[str, Any]
) -> Iterator[tuple[int, int, dict[str, pa.Array | pa.ChunkedArray]]]:
    """Each chunk of episodes `(a, b, columns)`: their stats columns `stats/<feature>/<stat>` in feature
    order. Pools each camera's stats into `pooled` on the way (None for a feature some episode lacks)."""
    spans = ranges(out.layout.n_episodes, data.STATS_CHUNK)
    visual = Visual(sources, out.layout)
    for (a, b), numeric in zip(spans, aligned_stats(read_stats(fs, got.stats_files), spans), strict=True):
        cameras = visual.take(a, b)
        if recompute and got.video_stats:
            cameras = _decoded(cameras, a, b, got)
        columns: dict[str, Any] = {}
        for key in out.info["features"]:
            if numeric is not None:
                columns |= {c: numeric[c] for c in numeric.column_names if meta.is_stat_of(c, {key})}
            mine = {meta.stat_of(c)[1]: cameras[c] for c in cameras.column_names if meta.is_stat_of(c, {key})}
            if mine and pooled.get(key, 0) is not None:
                part = pooled_visual(mine)
                pooled[key] = part if part is None or key not in pooled else pooled[key].merge(part)
            columns |= {f"stats/{key}/{name}": values for name, values in mine.items()}
        yield a, b, columns
        del numeric, cameras, columns  # one chunk alive at a time, not two


def _num(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def write(
    sources: list[meta.Source], out: Output, got: Collected, fs: Any, root: str, options: Any, recompute: bool
) -> list[str]:
    """info, episodes, tasks and stats of one output dataset; returns the paths written (relative)."""
    layout = out.layout
    version = layout.version
    video_keys = meta.video_keys(out.info["features"])
    n_eps = layout.n_episodes
    pooled: dict[str, Any] = {}
    chunks = stats_chunks(sources, out, got, fs, recompute, pooled)
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
        rows = zip(layout.episode_tasks.tolist(), layout.length.tolist(), strict=True)
        meta.write_jsonl(
            fs,
            storage.join(root, meta.V21_EPISODES),
            (
                {"episode_index": i, "tasks": list(layout.task_sets[tasks]), "length": length}
                for i, (tasks, length) in enumerate(rows)
            ),
        )
        meta.write_jsonl(fs, storage.join(root, meta.V21_EPISODES_STATS), _v21_stats(chunks))
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
        with EpisodeFiles(fs, root, options.data_files_size_in_mb * 1024**2, options.chunks_size) as files:
            for a, b, stats in chunks:
                files.write(pa.table(episode_columns(layout, a, b, got.placements) | stats))
                del stats  # before the next chunk is built
        written += files.paths
        meta.write_parquet(fs, storage.join(root, meta.V30_TASKS), meta.tasks_table(layout.tasks))
        written.append(meta.V30_TASKS)
        paths = {"data_path": meta.V30_DATA_PATH, "video_path": meta.V30_VIDEO_PATH if video_keys else None}
    info |= {"fps": out.info["fps"], "splits": {"train": f"0:{n_eps}"}, **paths, "features": out.info["features"]}
    overall: dict[str, Any] = {}
    for key in out.info["features"]:
        if key in got.summaries:
            overall[key] = got.summaries[key].to_stats(with_quantiles=True)
        elif pooled.get(key) is not None:
            overall[key] = pooled[key].to_stats(with_quantiles=False)
    meta.write_json(fs, storage.join(root, meta.STATS), overall)
    meta.write_json(fs, storage.join(root, meta.INFO), info)
    return written


def _v21_stats(chunks: Iterable[tuple[int, int, dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    """`episodes_stats.jsonl` rows (moments only), a chunk of episodes at a time."""
    for a, b, stats in chunks:
        kept = [(meta.stat_of(c), values.to_pylist()) for c, values in stats.items() if meta.stat_of(c)[1] in MOMENTS]
        for i in range(b - a):
            row: dict[str, dict[str, Any]] = {}
            for (key, name), values in kept:
                if values[i] is not None:
                    row.setdefault(key, {})[name] = values[i]
            yield {"episode_index": a + i, "stats": row}
        del stats, kept  # before the next chunk is built


def episode_columns(layout: Layout, a: int, b: int, placements: dict[str, np.ndarray]) -> dict[str, pa.Array]:
    """The v3.0 episodes table's columns before the stats, for output episodes a..b-1."""
    frame_from, lengths, data_slots = layout.frame_from[a:b], layout.length[a:b], layout.data_slots[a:b]
    tasks = [list(layout.task_sets[t]) for t in layout.episode_tasks[a:b].tolist()]
    columns: dict[str, pa.Array] = {
        "episode_index": pa.array(np.arange(a, b, dtype=np.int64)),
        "tasks": pa.array(tasks, pa.list_(pa.string())),
        "length": pa.array(lengths),
        "data/chunk_index": pa.array(data_slots[:, 0]),
        "data/file_index": pa.array(data_slots[:, 1]),
        "dataset_from_index": pa.array(frame_from),
        "dataset_to_index": pa.array(frame_from + lengths),
    }
    for key, placed in placements.items():
        mine = placed[a:b]
        if np.isnan(mine).any():
            raise AssertionError(f"{key}: episodes {a + np.flatnonzero(np.isnan(mine[:, 0]))[:10]} were not placed")
        slots = layout.video_slots[key][a:b]
        columns |= {
            f"videos/{key}/chunk_index": pa.array(slots[:, 0]),
            f"videos/{key}/file_index": pa.array(slots[:, 1]),
            f"videos/{key}/from_timestamp": pa.array(mine[:, 0]),
            f"videos/{key}/to_timestamp": pa.array(mine[:, 1]),
        }
    return columns


class EpisodeFiles:
    """The v3.0 episodes metadata, written in order into files of about `cap_bytes` of rows each (their size
    in memory, as LeRobot measures it), in chunk folders of `chunks_size` files."""

    def __init__(self, fs: Any, root: str, cap_bytes: float, chunks_size: int) -> None:
        self.fs, self.root, self.cap, self.chunks_size = fs, root, cap_bytes, chunks_size
        self.paths: list[str] = []
        self._file: Any = None
        self._writer: pq.ParquetWriter | None = None
        self._used = 0.0

    def write(self, table: pa.Table) -> None:
        row_bytes = table.nbytes / max(table.num_rows, 1)
        start = 0
        while start < table.num_rows or self._writer is None:
            if self._writer is not None and self._used + row_bytes > self.cap:
                self._close()
            room = max(1, int((self.cap - self._used) // row_bytes)) if row_bytes else table.num_rows
            part = table.slice(start, room)
            chunk, file = divmod(len(self.paths) - (self._writer is not None), self.chunks_size)
            part = part.append_column("meta/episodes/chunk_index", pa.array([chunk] * part.num_rows, pa.int64()))
            part = part.append_column("meta/episodes/file_index", pa.array([file] * part.num_rows, pa.int64()))
            if self._writer is None:
                self._open(part.schema, meta.V30_EPISODES_PATH.format(chunk_index=chunk, file_index=file))
            assert self._writer is not None
            self._writer.write_table(part)
            self._used += row_bytes * part.num_rows
            start += part.num_rows

    def _open(self, schema: pa.Schema, rel: str) -> None:
        path = storage.join(self.root, rel)
        self.fs.makedirs(storage.parent(path), exist_ok=True)
        self._file = self.fs.open(path, "wb")
        self._writer = pq.ParquetWriter(self._file, schema, compression="snappy")
        self.paths.append(rel)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._file.close()
        self._writer = self._file = None
        self._used = 0.0

    def __enter__(self) -> EpisodeFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()
