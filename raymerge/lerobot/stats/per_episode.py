"""The stats of each episode, computed where its frames are: by the data tasks from the parquet rows they
write, by the video tasks from decoded frames (`stats: recompute`).

Exact per-episode stats cost kilobytes per episode, so a data task writes them to a scratch parquet file (rows
in episode order, row groups of `STATS_CHUNK` episodes) and returns only mergeable per-file summaries; the
driver reads the files back a chunk at a time (`chunks`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.lerobot.arrays import run_starts
from raymerge.lerobot.stats.columns import list_column
from raymerge.lerobot.stats.summary import Summary, episode_stats, exact_stats, feature_matrix

STATS_CHUNK = 1024  # episodes of per-episode stats the driver holds at a time


def data_stats(
    table: pa.Table, features: dict[str, tuple[int, ...]], with_quantiles: bool
) -> tuple[pa.Table, dict[str, Summary]]:
    """Exact per-episode stats of a table of frames (`episode_index` and a `stats/<feature>/<stat>` list column
    each, in feature order) and a mergeable summary of every numeric feature over the whole table."""
    matrix, columns = feature_matrix(table, list(features))
    eps = table["episode_index"].to_numpy()
    starts = run_starts(eps)
    names, values = episode_stats(matrix, starts, with_quantiles)
    per_episode = {"episode_index": pa.array(eps[starts].astype(np.int64))}
    for key, a, b in columns:
        for i, name in enumerate(names):
            per_episode[f"stats/{key}/{name}"] = list_column(values[:, i, a : a + 1 if name == "count" else b], name)
    return pa.table(per_episode), {key: Summary.of(matrix[a:b].T, features[key]) for key, a, b in columns}


def frame_stats(frames: np.ndarray) -> dict[str, list]:
    """Per-channel stats of decoded (N, H, W, 3) uint8 frames scaled to [0, 1], LeRobot's (3, 1, 1) layout."""
    x = frames.reshape(-1, 3).astype(np.float64) / 255.0
    out = exact_stats(x)
    return {k: (v if k == "count" else np.asarray(v).reshape(3, 1, 1).tolist()) for k, v in out.items()} | {
        "count": [len(frames)]
    }


def pixel_histogram(frames: np.ndarray) -> np.ndarray:
    """(3, 256) counts of each channel's values in decoded (N, H, W, 3) uint8 frames: pooled over a whole
    dataset, exact quantiles of its pixels (values are k / 255, so 256 bins hold them all)."""
    channels = frames.reshape(-1, 3)
    return np.stack([np.bincount(channels[:, c], minlength=256) for c in range(3)]).astype(np.int64)


def write_scratch(fs: AbstractFileSystem, path: str, tables: list[pa.Table]) -> None:
    """One task's per-episode stats (tables in episode order) as one scratch file."""
    fs.makedirs(storage.parent(path), exist_ok=True)
    with fs.open(path, "wb") as f:
        pq.write_table(pa.concat_tables(tables), f, row_group_size=STATS_CHUNK, compression="snappy")


def read_scratch(fs: AbstractFileSystem, paths: list[str]) -> Iterator[pa.RecordBatch]:
    """The scratch files' rows in order, `STATS_CHUNK` at a time."""
    for path in paths:
        with fs.open(path, "rb") as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=STATS_CHUNK)
