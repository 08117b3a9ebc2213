"""Write output videos (Ray task per batch of output files): whole-file copies or packet remux of runs.

Timestamps come from what `video.concat` actually wrote: an episode's `from_timestamp` is where its run
landed plus its offset inside the run, so frame i is read at `from_timestamp + timestamp` as in the source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.lerobot.layout import VideoJob, VideoRun
from raymerge.lerobot.stats import exact_stats


@dataclass
class VideoResult:
    key: str
    path: str
    episodes: np.ndarray  # the output episodes the file holds
    placements: np.ndarray  # (episodes, 2): each one's from_timestamp and to_timestamp
    copied: bool
    reencoded: list[int] = field(default_factory=list)
    stats: dict[int, dict[str, Any]] = field(default_factory=dict)


def frame_stats(frames: np.ndarray) -> dict[str, Any]:
    """Per-channel stats of decoded (N, H, W, 3) uint8 frames scaled to [0, 1], LeRobot's (3, 1, 1) layout."""
    x = frames.reshape(-1, 3).astype(np.float64) / 255.0
    out = exact_stats(x)
    return {k: (v if k == "count" else np.asarray(v).reshape(3, 1, 1).tolist()) for k, v in out.items()} | {
        "count": [len(frames)]
    }


def copy_placements(run: VideoRun) -> tuple[np.ndarray, np.ndarray]:
    """Where a whole-file copy puts its episodes (and their (from, to) timestamps): the bytes are the
    source's, so each stays where it was."""
    starts = run.start_s + run.offsets
    return np.arange(run.episodes.start, run.episodes.stop), np.stack([starts, starts + run.durations], axis=1)


def write_job(
    job: VideoJob,
    fs_of: dict[int, AbstractFileSystem],
    out_fs: AbstractFileSystem,
    out_root: str,
    lengths: np.ndarray | None,
    fps: float,
) -> VideoResult:
    """Write one output video; with `lengths` of the output episodes (recompute_video_stats) also decode it
    for per-episode stats."""
    path = storage.join(out_root, job.path)
    out_fs.makedirs(storage.parent(path), exist_ok=True)
    result = _write(job, fs_of, out_fs, path)
    if lengths is not None:
        from raymerge.lerobot import video

        for episode, start in zip(result.episodes.tolist(), result.placements[:, 0].tolist(), strict=True):
            stamps = [start + i / fps for i in range(lengths[episode])]
            result.stats[episode] = frame_stats(video.decode_at(out_fs, path, stamps))
    return result


def _write(job: VideoJob, fs_of: dict[int, AbstractFileSystem], out_fs: AbstractFileSystem, path: str) -> VideoResult:
    from raymerge.lerobot import video

    if job.is_copy:
        run = job.runs[0]
        video.copy(fs_of[run.source], run.path, out_fs, path)
        return VideoResult(job.key, job.path, *copy_placements(run), copied=True)
    segments = [video.Segment(fs_of[r.source], r.path, r.start_s, r.end_s) for r in job.runs]
    placed = video.concat(segments, out_fs, path)
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
    placed = np.array(placements, dtype=np.float64).reshape(-1, 2)
    return VideoResult(job.key, job.path, np.array(episodes, dtype=np.int64), placed, copied=False, reencoded=reencoded)


def write_batch(jobs: list[VideoJob], *args: Any) -> list[VideoResult]:
    return [write_job(job, *args) for job in jobs]
