"""Metadata scans of input files, run as tasks: rows and task indices per episode of each data file, and
video stream probes.

Only the small `episode_index`/`task_index` columns and mp4 headers (plus the last groups of pictures) are
read, unless a plan asks for the groups of pictures of files it cuts; results are tiny tables.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.errors import InvalidInput
from raymerge.lerobot.arrays import even_parts, numbers

if TYPE_CHECKING:
    from raymerge.executor import Executor
    from raymerge.lerobot.video.probe import StreamInfo


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


def read_episode_rows(fs: AbstractFileSystem, path: str, size: int | None = None) -> EpisodeRows:
    """Rows and task indices per episode of one data file (its footer and two columns, read by range); a
    corrupt file is rejected by name."""
    from raymerge.lerobot import ranged

    try:
        with ranged.open_input(fs, path, size) as f:
            table = pq.ParquetFile(f).read(columns=["episode_index", "task_index"])
    except FileNotFoundError:
        raise InvalidInput(f"{storage.url(fs, path)}: data file is missing") from None
    except (pa.ArrowException, OSError) as e:
        raise InvalidInput(f"{storage.url(fs, path)}: corrupt parquet file: {e}") from None
    eps, tasks = (numbers(table, c, np.int64, storage.url(fs, path)) for c in ("episode_index", "task_index"))
    found, counts = np.unique(eps, return_counts=True)
    if not len(eps):
        return EpisodeRows(found, counts, eps, tasks)
    low, span = int(tasks.min()), int(tasks.max() - tasks.min()) + 1  # distinct pairs with one 1-D sort
    pairs = np.unique((eps - found[0]) * span + (tasks - low))
    return EpisodeRows(found, counts, pairs // span + found[0], pairs % span + low)


def probe_video(fs: AbstractFileSystem, path: str, index: bool, size: int | None = None) -> StreamInfo:
    """One video's stream (with `index`, also its groups of pictures); an unreadable file is rejected by name.
    `size`, from the listing, spares a request for it on object storage."""
    from raymerge.lerobot.video.probe import probe

    try:
        return probe(fs, path, index=index, size=size)
    except FileNotFoundError:
        raise InvalidInput(f"{storage.url(fs, path)}: video file is missing") from None
    except Exception as e:
        raise InvalidInput(f"{storage.url(fs, path)}: not a readable video: {e}") from None


def submit_batched(
    executor: Executor,
    task: Callable[[AbstractFileSystem, list[Any]], list[Any]],
    work: list[tuple[AbstractFileSystem, Any]],
) -> Callable[[], list[Any]]:
    """`task(fs, items)` over (fs, item) pairs (an item is a path, or a path and its size) grouped by filesystem, in about `executor.parallelism()` tasks
    submitted now; the returned function waits for the results, in input order (so that several scans run
    at the same time). A failed task's error is raised once every task has finished (`settle`)."""
    handles, spans = [], []
    groups: dict[int, tuple[AbstractFileSystem, list[int]]] = {}
    for i, (fs, _) in enumerate(work):
        groups.setdefault(id(fs), (fs, []))[1].append(i)
    for fs, idxs in groups.values():
        for part in even_parts(idxs, executor.parallelism()):
            handles.append(executor.submit(task, fs, [work[i][1] for i in part]))
            spans.append(part)

    def gather() -> list[Any]:
        results: list[Any] = [None] * len(work)
        per_task = [s.result() for s in settle(*(functools.partial(executor.get, h) for h in handles))]
        for part, found in zip(spans, per_task, strict=True):
            for i, v in zip(part, found, strict=True):
                results[i] = v
        return results

    return gather


class Settled(NamedTuple):
    """What waiting for something gave: its value, or the error it raised."""

    value: Any
    error: Exception | None

    def result(self) -> Any:
        """The value, or the error raised now."""
        if self.error is not None:
            raise self.error
        return self.value


def settle(*waits: Callable[[], Any]) -> list[Settled]:
    """Each wait waited for, in order, even after one failed: a failing scan ends the run only once the other
    scans are done (none is cancelled as it finishes), and bad input names the first failing file in input
    order, whichever task finished first."""
    out = []
    for wait in waits:
        try:
            out.append(Settled(wait(), None))
        except Exception as e:
            out.append(Settled(None, e))
    return out
