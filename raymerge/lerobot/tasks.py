"""The task bodies of a LeRobot run: plain functions the executor runs as Ray tasks or in this process.

Scans (data rows, video probes) run during the plan; writes (data files with their stats, video files)
during execute. Each takes and returns small values: paths, jobs of the layout, results and summaries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.lerobot.data import DataResult, DataWriteContext, write_data_file
from raymerge.lerobot.encode_plan import Encode, ImageJob
from raymerge.lerobot.layout import DataJob, VideoJob
from raymerge.lerobot.scan import EpisodeRows, probe_video, read_episode_rows
from raymerge.lerobot.stats import per_episode
from raymerge.lerobot.video.write import VideoResult, write_video

if TYPE_CHECKING:
    from raymerge.lerobot.video.probe import StreamInfo


def warm_imports() -> None:
    """Import what the write tasks need (PyAV, the mp4 modules), started while the driver reads metadata: a new
    Ray job's workers start cold, which would otherwise delay the first scan."""
    import raymerge.lerobot.video.decode
    import raymerge.lerobot.video.remux  # noqa: F401


def scan_data_files(fs: AbstractFileSystem, files: list[tuple[str, int]]) -> list[EpisodeRows]:
    """Rows and task indices per episode of each (path, size) data file."""
    return [read_episode_rows(fs, p, n) for p, n in files]


def probe_video_files(fs: AbstractFileSystem, files: list[tuple[str, int]]) -> list[StreamInfo]:
    """Each (path, size) video's stream parameters and length, from its headers and sample table."""
    return [probe_video(fs, p, index=False, size=n) for p, n in files]


def index_video_files(fs: AbstractFileSystem, files: list[tuple[str, int]]) -> list[StreamInfo]:
    """Each (path, size) video's stream and groups of pictures: for files a layout cuts."""
    return [probe_video(fs, p, index=True, size=n) for p, n in files]


def write_data_files(jobs: list[DataJob], context: DataWriteContext, stats_path: str) -> list[DataResult]:
    """The output data files of one task, and one scratch file of their episodes' stats at `stats_path` (on the
    output's filesystem) if any episode has rows."""
    results, stats = [], []
    for job in jobs:
        result, episode_stats = write_data_file(job, context)
        results.append(result)
        if episode_stats.num_rows:
            stats.append(episode_stats)
    if stats:
        per_episode.write_scratch(context.fs, stats_path, stats)
    return results


def write_video_file(
    job: VideoJob,
    fs_of: dict[int, AbstractFileSystem],
    out_fs: AbstractFileSystem,
    out_root: str,
    lengths: np.ndarray | None,
    fps: float,
    sizes: dict[tuple[int, str], int] | None = None,
) -> VideoResult:
    """One output video file; given the output episodes' `lengths` (recompute_video_stats), also the camera
    stats of each of its episodes and the histogram of all their pixels, from the frames decoded back from
    the written file. `sizes`: of the source videos, from their listings."""
    result = write_video(job, fs_of, out_fs, out_root, sizes)
    if lengths is not None:
        _add_decoded_stats(result, out_fs, out_root, lengths, fps)
    return result


def encode_video_file(
    job: VideoJob | ImageJob,
    encode: Encode,
    lengths: np.ndarray,
    fs_of: dict[int, AbstractFileSystem],
    out_fs: AbstractFileSystem,
    out_root: str,
    recompute: bool,
    sizes: dict[tuple[int, str], int] | None = None,
) -> VideoResult:
    """One output video file encoded from images or re-encoded from source videos (`lengths`: the output
    episodes' frame counts); with `recompute`, its episodes' camera stats from the decoded file, as above."""
    from raymerge.lerobot.video.transcode import write_encoded

    result = write_encoded(job, encode, lengths, fs_of, out_fs, out_root, sizes)
    if recompute:
        _add_decoded_stats(result, out_fs, out_root, lengths, encode.fps)
    return result


def join_encoded_pieces(
    job: VideoJob | ImageJob,
    fps: int,
    lengths: np.ndarray,
    out_fs: AbstractFileSystem,
    pieces_root: str,
    out_root: str,
    recompute: bool,
    *pieces: VideoResult,
) -> VideoResult:
    """One output video file made of the pieces its encode was cut into (written below `pieces_root`): their
    packets copied one after the other (each piece starts with a keyframe, so nothing is decoded), the pieces
    then deleted; its episodes placed where their piece landed."""
    from raymerge.lerobot.video.remux import Segment, concat

    paths = [storage.join(pieces_root, p.path) for p in pieces]
    segments = [Segment(out_fs, path, 0.0, float(p.placements[-1, 1])) for path, p in zip(paths, pieces, strict=True)]
    placed = concat(segments, out_fs, storage.join(out_root, job.path))
    out_fs.rm(paths)
    episodes = np.concatenate([p.episodes for p in pieces])
    placements = np.concatenate([p.placements + at.from_timestamp for p, at in zip(pieces, placed, strict=True)])
    result = VideoResult(job.key, job.path, episodes, placements, copied=False, reencoded=episodes.tolist())
    if recompute:
        _add_decoded_stats(result, out_fs, out_root, lengths, fps)
    return result


def _add_decoded_stats(
    result: VideoResult, out_fs: AbstractFileSystem, out_root: str, lengths: np.ndarray, fps: float
) -> None:
    """The camera stats of each episode of a written file and the histogram of all their pixels, decoded back."""
    from raymerge.lerobot.video.decode import decode_at

    path = storage.join(out_root, result.path)
    result.histogram = np.zeros((3, 256), dtype=np.int64)
    for episode, start in zip(result.episodes.tolist(), result.placements[:, 0].tolist(), strict=True):
        stamps = [start + i / fps for i in range(lengths[episode])]
        frames = decode_at(out_fs, path, stamps)
        result.stats[episode] = per_episode.frame_stats(frames)
        result.histogram += per_episode.pixel_histogram(frames)
