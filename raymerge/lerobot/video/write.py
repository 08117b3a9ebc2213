"""One output video file of a layout: a whole source file copied, or runs of source videos remuxed into it;
and where each of its episodes landed.

Timestamps come from what `remux.concat` actually wrote: an episode's `from_timestamp` is where its run
landed plus its offset inside the run, so frame i is read at `from_timestamp + timestamp` as in the source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.lerobot.layout import VideoJob, VideoRun


@dataclass
class VideoResult:
    """What writing one output video gave: its episodes' (from, to) timestamps, and how it was made."""

    key: str
    path: str
    episodes: np.ndarray  # the output episodes the file holds
    placements: np.ndarray  # (episodes, 2): each one's from_timestamp and to_timestamp
    copied: bool
    reencoded: list[int] = field(default_factory=list)
    stats: dict[int, dict[str, Any]] = field(default_factory=dict)  # by output episode, with recompute_video_stats
    histogram: np.ndarray | None = None  # (3, 256) pixel counts of its episodes, with recompute_video_stats


def copy_placements(run: VideoRun) -> tuple[np.ndarray, np.ndarray]:
    """Where a whole-file copy puts its episodes (and their (from, to) timestamps): the bytes are the
    source's, so each stays where it was. Known before the copy runs, so metadata need not wait for it."""
    starts = run.start_s + run.offsets
    return np.arange(run.episodes.start, run.episodes.stop), np.stack([starts, starts + run.durations], axis=1)


def write_video(
    job: VideoJob,
    fs_of: dict[int, AbstractFileSystem],
    out_fs: AbstractFileSystem,
    out_root: str,
    sizes: dict[tuple[int, str], int] | None = None,
) -> VideoResult:
    """Write the job's file below `out_root` on `out_fs` (copy or remux) and place its episodes; `sizes` of
    the source files (from their listings) spare requests for them.

    The mp4 modules are imported here, in the task: the driver, which only needs `copy_placements`, never
    loads PyAV."""
    from raymerge.lerobot.video import io, remux

    path = storage.join(out_root, job.path)
    out_fs.makedirs(storage.parent(path), exist_ok=True)
    if job.is_copy:
        run = job.runs[0]
        io.copy(fs_of[run.source], run.path, out_fs, path)
        return VideoResult(job.key, job.path, *copy_placements(run), copied=True)
    known = sizes or {}
    segments = [
        remux.Segment(fs_of[r.source], r.path, r.start_s, r.end_s, known.get((r.source, r.path))) for r in job.runs
    ]
    placed = remux.concat(segments, out_fs, path)
    episodes: list[int] = []
    placements: list[tuple[float, float]] = []
    reencoded: list[int] = []
    for run, where in zip(job.runs, placed, strict=True):
        last = len(run.offsets) - 1
        offsets, durations = run.offsets.tolist(), run.durations.tolist()
        for i, (episode, offset, duration) in enumerate(zip(run.episodes, offsets, durations, strict=True)):
            start = where.from_timestamp + offset
            episodes.append(episode)
            placements.append((start, where.to_timestamp if i == last else start + duration))
            if where.reencoded:
                reencoded.append(episode)
    return VideoResult(
        job.key,
        job.path,
        np.array(episodes, dtype=np.int64),
        np.array(placements, dtype=np.float64).reshape(-1, 2),
        copied=False,
        reencoded=reencoded,
    )
