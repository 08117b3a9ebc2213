"""What raymerge writes of an output dataset's metadata: info, episodes, tasks and stats, in either version,
written a chunk of episodes at a time.

The episodes table is never whole on the driver: its stats come from `stats.chunks` one chunk of episodes at a
time, its video placements are one (episodes, 2) array per camera. v3.0 episodes files are filled up to the
data file size cap as LeRobot measures it (rows in memory).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.lerobot import formats
from raymerge.lerobot.config import LeRobotOutput
from raymerge.lerobot.layout import Layout
from raymerge.lerobot.results import TaskResults
from raymerge.lerobot.schema import tasks_table
from raymerge.lerobot.source_meta import Source
from raymerge.lerobot.stats.chunks import StoredCameraStats, stats_chunks, v21_stats_rows
from raymerge.lerobot.stats.summary import Summary, dataset_stats

if TYPE_CHECKING:
    from raymerge.lerobot.plan import Output


def _num(value: float) -> float | int:
    """A size as info.json shows it: 100, not 100.0."""
    return int(value) if float(value).is_integer() else value


def write(
    sources: list[Source],
    out: Output,
    results: TaskResults,
    fs: AbstractFileSystem,
    root: str,
    options: LeRobotOutput,
    recompute: bool,
) -> list[str]:
    """info, episodes, tasks and stats of one output dataset below `root`; returns the paths written (relative).

    With `recompute` the camera stats are those of the decoded output videos, not the sources' stored ones."""
    layout = out.layout
    version = layout.version
    features = out.info["features"]
    video_keys = formats.video_keys(features)
    n_eps = layout.n_episodes
    pooled: dict[str, Summary | None] = {}
    cameras = StoredCameraStats({s.position: s.camera_stats for s in sources}, layout.source, layout.row)
    decoded = results.video_stats if recompute else None
    chunks = stats_chunks(features, n_eps, fs, results.stats_files, cameras, decoded, pooled)
    info: dict[str, Any] = {
        "codebase_version": version,
        "robot_type": out.info["robot_type"],
        "total_episodes": n_eps,
        "total_frames": layout.frames,
        "total_tasks": len(layout.tasks),
    }
    written = [formats.INFO, formats.STATS]
    if version == formats.V21:
        info |= {
            "total_videos": n_eps * len(video_keys),
            "total_chunks": math.ceil(n_eps / options.chunks_size),
            "chunks_size": options.chunks_size,
        }
        rows = zip(layout.episode_tasks.tolist(), layout.length.tolist(), strict=True)
        write_jsonl(
            fs,
            storage.join(root, formats.V21_EPISODES),
            (
                {"episode_index": i, "tasks": list(layout.task_sets[tasks]), "length": length}
                for i, (tasks, length) in enumerate(rows)
            ),
        )
        write_jsonl(fs, storage.join(root, formats.V21_EPISODES_STATS), v21_stats_rows(chunks))
        write_jsonl(
            fs,
            storage.join(root, formats.V21_TASKS),
            [{"task_index": i, "task": t} for i, t in enumerate(layout.tasks)],
        )
        written += [formats.V21_EPISODES, formats.V21_EPISODES_STATS, formats.V21_TASKS]
        paths = {"data_path": formats.V21_DATA_PATH, "video_path": formats.V21_VIDEO_PATH if video_keys else None}
    else:
        info |= {
            "chunks_size": options.chunks_size,
            "data_files_size_in_mb": _num(options.data_files_size_in_mb),
            "video_files_size_in_mb": _num(options.video_files_size_in_mb),
        }
        with EpisodeFiles(fs, root, options.data_files_size_in_mb * 1024**2, options.chunks_size) as files:
            for a, b, stats in chunks:
                files.write(pa.table(episode_columns(layout, a, b, results.placements) | stats))
                del stats  # before the next chunk is built
        written += files.paths
        write_parquet(fs, storage.join(root, formats.V30_TASKS), tasks_table(layout.tasks))
        written.append(formats.V30_TASKS)
        paths = {"data_path": formats.V30_DATA_PATH, "video_path": formats.V30_VIDEO_PATH if video_keys else None}
    info |= {"fps": out.info["fps"], "splits": {"train": f"0:{n_eps}"}, **paths, "features": features}
    for key, histogram in (results.histograms if recompute else {}).items():
        if (part := pooled.get(key)) is not None:  # every pixel decoded: exact quantiles
            pooled[key] = part.with_histogram(histogram, np.arange(256) / 255.0)
    write_json(fs, storage.join(root, formats.STATS), dataset_stats(list(features), results.summaries, pooled))
    write_json(fs, storage.join(root, formats.INFO), info)
    return written


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

    def __init__(self, fs: AbstractFileSystem, root: str, cap_bytes: float, chunks_size: int) -> None:
        self.fs, self.root, self.cap, self.chunks_size = fs, root, cap_bytes, chunks_size
        self.paths: list[str] = []
        self._file: Any = None
        self._writer: pq.ParquetWriter | None = None
        self._used = 0.0

    def write(self, table: pa.Table) -> None:
        """Append the next episodes' rows, starting a new file whenever the current one is full."""
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
                self._open(part.schema, formats.V30_EPISODES_PATH.format(chunk_index=chunk, file_index=file))
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


def _write_bytes(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    """A small file written whole, its folder made first."""
    fs.makedirs(storage.parent(path), exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)


def write_json(fs: AbstractFileSystem, path: str, value: Any) -> None:
    """JSON as LeRobot writes it: indented by 4, non-ASCII kept."""
    _write_bytes(fs, path, json.dumps(value, indent=4, ensure_ascii=False).encode())


def write_jsonl(fs: AbstractFileSystem, path: str, rows: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line."""
    _write_bytes(fs, path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())


def write_parquet(fs: AbstractFileSystem, path: str, table: pa.Table) -> None:
    """A snappy parquet file, as LeRobot writes its metadata tables."""
    fs.makedirs(storage.parent(path), exist_ok=True)
    with fs.open(path, "wb") as f:  # straight to the file: no second copy of the encoded table in memory
        pq.write_table(table, f, compression="snappy")
