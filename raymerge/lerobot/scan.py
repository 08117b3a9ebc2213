"""Metadata scans in Ray tasks: rows and task indices per episode of each data file, video stream probes.

Only the small `episode_index`/`task_index` columns and mp4 headers (plus the last groups of pictures) are
read, unless a plan asks for the groups of pictures of files it cuts; results are tiny tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.errors import InvalidInput
from raymerge.lerobot import meta


@dataclass
class EpisodeRows:
    """The episodes of one data file (sorted), their rows, and the distinct (episode, task_index) pairs."""

    episodes: np.ndarray
    rows: np.ndarray
    pair_episodes: np.ndarray
    pair_tasks: np.ndarray

    def rows_of(self, episodes: np.ndarray) -> np.ndarray:
        """Rows of each given episode (0 for one not in the file)."""
        at = np.searchsorted(self.episodes, episodes)
        inside = at < len(self.episodes)
        hit = np.flatnonzero(inside)[self.episodes[at[inside]] == episodes[inside]]
        out = np.zeros(len(episodes), dtype=np.int64)
        out[hit] = self.rows[at[hit]]
        return out


def episode_rows(fs: AbstractFileSystem, path: str) -> EpisodeRows:
    """Rows and task indices per episode of one data file; a corrupt file is rejected by name."""
    try:
        with fs.open(path, "rb") as f:
            table = pq.ParquetFile(f).read(columns=["episode_index", "task_index"])
    except FileNotFoundError:
        raise InvalidInput(f"{storage.url(fs, path)}: data file is missing") from None
    except (pa.ArrowException, OSError) as e:
        raise InvalidInput(f"{storage.url(fs, path)}: corrupt parquet file: {e}") from None
    eps, tasks = (meta.numbers(table, c, np.int64, storage.url(fs, path)) for c in ("episode_index", "task_index"))
    found, counts = np.unique(eps, return_counts=True)
    if not len(eps):
        return EpisodeRows(found, counts, eps, tasks)
    low, span = int(tasks.min()), int(tasks.max() - tasks.min()) + 1  # distinct pairs with one 1-D sort
    pairs = np.unique((eps - found[0]) * span + (tasks - low))
    return EpisodeRows(found, counts, pairs // span + found[0], pairs % span + low)


def _scan_batch(fs: AbstractFileSystem, paths: list[str]) -> list[EpisodeRows]:
    return [episode_rows(fs, p) for p in paths]


def _probe_all(fs: AbstractFileSystem, paths: list[str], index: bool) -> list[Any]:
    from raymerge.lerobot import video

    out = []
    for p in paths:
        try:
            out.append(video.probe(fs, p, index=index))
        except FileNotFoundError:
            raise InvalidInput(f"{storage.url(fs, p)}: video file is missing") from None
        except Exception as e:
            raise InvalidInput(f"{storage.url(fs, p)}: not a readable video: {e}") from None
    return out


def _probe_batch(fs: AbstractFileSystem, paths: list[str]) -> list[Any]:
    return _probe_all(fs, paths, index=False)


def _index_batch(fs: AbstractFileSystem, paths: list[str]) -> list[Any]:
    return _probe_all(fs, paths, index=True)


def _warm() -> None:
    import raymerge.lerobot.data
    import raymerge.lerobot.video  # noqa: F401


def warm_up(workers: int) -> None:
    """Start the job's workers and their imports now (not waited for), while the driver reads metadata:
    a new Ray job's workers start cold, which otherwise delays the first scan."""
    import ray

    remote = ray.remote(_warm)
    for _ in range(workers):
        remote.remote()


def batches(items: list[Any], n: int) -> list[list[Any]]:
    """Split into at most n contiguous, nearly equal batches (order kept)."""
    n = max(1, min(n, len(items)))
    bounds = np.linspace(0, len(items), n + 1).astype(int)
    return [items[bounds[i] : bounds[i + 1]] for i in range(n) if bounds[i] < bounds[i + 1]]


def run_batched(fn: Any, work: list[tuple[AbstractFileSystem, str]], parallelism: int) -> Callable[[], list[Any]]:
    """`fn(fs, paths)` in Ray tasks over (fs, path) pairs grouped by filesystem, submitted now; the returned
    function waits for the results, in input order (so that several scans run at the same time)."""
    import ray

    remote = ray.remote(fn)
    refs, spans = [], []
    groups: dict[int, tuple[AbstractFileSystem, list[int]]] = {}
    for i, (fs, _) in enumerate(work):
        groups.setdefault(id(fs), (fs, []))[1].append(i)
    for fs, idxs in groups.values():
        for batch in batches(idxs, parallelism):
            refs.append(remote.remote(fs, [work[i][1] for i in batch]))
            spans.append(batch)

    def gather() -> list[Any]:
        results: list[Any] = [None] * len(work)
        for batch, values in zip(spans, ray.get(refs), strict=True):
            for i, v in zip(batch, values, strict=True):
                results[i] = v
        return results

    return gather


def scan_data(work: list[tuple[AbstractFileSystem, str]], parallelism: int) -> Callable[[], list[EpisodeRows]]:
    return run_batched(_scan_batch, work, parallelism)


def probe_videos(
    work: list[tuple[AbstractFileSystem, str]], parallelism: int, *, index: bool = False
) -> Callable[[], list[Any]]:
    """Stream probes; with `index` also each file's groups of pictures (reads the files whole)."""
    return run_batched(_index_batch if index else _probe_batch, work, parallelism)
