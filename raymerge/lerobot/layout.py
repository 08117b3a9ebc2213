"""Where every output episode, frame and video segment goes: offsets, tasks, files. Plain values only.

Given the chosen source episodes in output order (with their estimated byte sizes), this decides new
indices, the task table, and the jobs the writers run: one per output parquet file and one per output
video file. v2.1 puts each episode in its own files; v3.0 packs consecutive episodes into files up to a
size cap, and chunk folders up to `chunks_size` files.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from raymerge.lerobot import meta
from raymerge.lerobot.meta import SourceEpisode

# Two episodes of one source video are contiguous when one ends where the next starts.
_CONTIGUOUS_S = 1e-4


@dataclass(frozen=True, slots=True)
class Sized:
    """A chosen source episode with its estimated bytes of data and of video per camera."""

    episode: SourceEpisode
    data_bytes: float
    video_bytes: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DataPart:
    source: int
    path: str
    src_episode: int
    episode: int
    frame_from: int


@dataclass
class DataJob:
    path: str  # relative to the output dataset root
    parts: list[DataPart]


@dataclass
class VideoRun:
    """A stretch of one source video holding consecutive output episodes: (episode, offset_s, duration_s)."""

    source: int
    path: str
    start_s: float
    end_s: float
    episodes: list[tuple[int, float, float]]
    whole_file: bool = False


@dataclass
class VideoJob:
    key: str
    path: str
    runs: list[VideoRun]

    @property
    def is_copy(self) -> bool:
        return len(self.runs) == 1 and self.runs[0].whole_file


@dataclass(slots=True)
class OutEpisode:
    episode: SourceEpisode
    index: int
    frame_from: int
    data: tuple[int, int]  # (chunk, file) for v3.0; (chunk, episode) for v2.1
    videos: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass
class Layout:
    version: str
    episodes: list[OutEpisode]
    tasks: list[str]
    task_maps: dict[int, list[int]]
    data_jobs: list[DataJob]
    video_jobs: list[VideoJob]

    @property
    def frames(self) -> int:
        return sum(e.episode.length for e in self.episodes)


def union_tasks(
    chosen: list[SourceEpisode], source_tasks: dict[int, list[str]]
) -> tuple[list[str], dict[int, list[int]]]:
    """Tasks used by the chosen episodes, in the sources' order of first appearance; old -> new per source."""
    used: dict[int, set[str]] = {}
    for ep in chosen:
        used.setdefault(ep.source, set()).update(ep.tasks)
    tasks: list[str] = []
    position: dict[str, int] = {}
    maps: dict[int, list[int]] = {}
    for src in sorted(used):
        for task in source_tasks[src]:
            if task in used[src] and task not in position:
                position[task] = len(tasks)
                tasks.append(task)
        maps[src] = [position.get(t, -1) if t in used[src] else -1 for t in source_tasks[src]]
    return tasks, maps


def _pack(sizes: list[float], cap_bytes: float) -> list[int]:
    """File number per item: consecutive items share a file until adding one would pass the cap."""
    out, current, used = [], 0, 0.0
    for size in sizes:
        if used > 0 and used + size > cap_bytes:
            current, used = current + 1, 0.0
        out.append(current)
        used += size
    return out


def _chunk_file(n: int, chunks_size: int) -> tuple[int, int]:
    return n // chunks_size, n % chunks_size


def units(chosen: list[Sized], key: str, file_episodes: dict[tuple[int, str], int]) -> list[tuple[int, int, bool]]:
    """Runs `(first, end, whole)` of chosen positions for camera `key`: a whole source file when all of its
    episodes come consecutively in their file order (it can be copied as it is), single episodes otherwise."""
    out: list[tuple[int, int, bool]] = []
    i = 0
    while i < len(chosen):
        ep = chosen[i].episode
        span = ep.videos[key]
        j = i + 1
        while (
            j < len(chosen)
            and chosen[j].episode.source == ep.source
            and chosen[j].episode.videos[key].path == span.path
        ):
            j += 1
        spans = [c.episode.videos[key] for c in chosen[i:j]]
        ordered = all(
            a.end_s is not None and a.end_s <= b.start_s + _CONTIGUOUS_S for a, b in itertools.pairwise(spans)
        )
        if j - i == file_episodes.get((ep.source, span.path), 0) and ordered:
            out.append((i, j, True))
        else:
            out.extend((k, k + 1, False) for k in range(i, j))
        i = j
    return out


def _video_units(
    chosen: list[Sized], key: str, file_episodes: dict[tuple[int, str], int], cap_bytes: float
) -> tuple[list[tuple[int, int, bool]], list[int]]:
    """v3.0 video units per camera and the file number of each: whole source files are kept whole unless
    they pass the cap alone (then their episodes are packed one by one)."""
    sized: list[tuple[int, int, bool]] = []
    for first, end, whole in units(chosen, key, file_episodes):
        if whole and end - first > 1 and sum(c.video_bytes.get(key, 0.0) for c in chosen[first:end]) > cap_bytes:
            sized.extend((k, k + 1, False) for k in range(first, end))
        else:
            sized.append((first, end, whole))
    sizes = [sum(c.video_bytes.get(key, 0.0) for c in chosen[a:b]) for a, b, _ in sized]
    return sized, _pack(sizes, cap_bytes)


def plan_layout(
    chosen: list[Sized],
    source_tasks: dict[int, list[str]],
    version: str,
    video_keys: list[str],
    *,
    data_files_size_in_mb: float,
    video_files_size_in_mb: float,
    chunks_size: int,
    file_episodes: dict[tuple[int, str], int] | None = None,
) -> Layout:
    """`file_episodes`: how many episodes each source video file (source, path) holds, to find whole files."""
    tasks, task_maps = union_tasks([s.episode for s in chosen], source_tasks)
    video_units: dict[str, list[tuple[int, int, bool]]] = {}
    video_slots: dict[str, list[tuple[int, int]]] = {}
    if version == meta.V21:
        data_slots = [(i // chunks_size, i) for i in range(len(chosen))]
        for k in video_keys:
            video_units[k] = [(i, i + 1, s.episode.videos[k].whole_file) for i, s in enumerate(chosen)]
            video_slots[k] = data_slots
    else:
        data_files = _pack([s.data_bytes for s in chosen], data_files_size_in_mb * 1024**2)
        data_slots = [_chunk_file(n, chunks_size) for n in data_files]
        for k in video_keys:
            video_units[k], files = _video_units(chosen, k, file_episodes or {}, video_files_size_in_mb * 1024**2)
            video_slots[k] = [_chunk_file(n, chunks_size) for n in files]
    episodes = []
    frame = 0
    for i, s in enumerate(chosen):
        episodes.append(OutEpisode(s.episode, i, frame, data_slots[i]))
        frame += s.episode.length
    for k in video_keys:
        for (first, end, _), slot in zip(video_units[k], video_slots[k], strict=True):
            for e in episodes[first:end]:
                e.videos[k] = slot
    return Layout(
        version,
        episodes,
        tasks,
        task_maps,
        data_jobs(episodes, version),
        [job for k in video_keys for job in video_jobs(episodes, version, k, video_units[k])],
    )


def data_path(version: str, slot: tuple[int, int]) -> str:
    if version == meta.V21:
        return meta.V21_DATA_PATH.format(episode_chunk=slot[0], episode_index=slot[1])
    return meta.V30_DATA_PATH.format(chunk_index=slot[0], file_index=slot[1])


def video_path(version: str, key: str, slot: tuple[int, int]) -> str:
    if version == meta.V21:
        return meta.V21_VIDEO_PATH.format(episode_chunk=slot[0], video_key=key, episode_index=slot[1])
    return meta.V30_VIDEO_PATH.format(video_key=key, chunk_index=slot[0], file_index=slot[1])


def data_jobs(episodes: list[OutEpisode], version: str) -> list[DataJob]:
    jobs: dict[tuple[int, int], DataJob] = {}
    for e in episodes:
        job = jobs.setdefault(e.data, DataJob(data_path(version, e.data), []))
        job.parts.append(DataPart(e.episode.source, e.episode.data_path, e.episode.index, e.index, e.frame_from))
    return list(jobs.values())


def video_jobs(
    episodes: list[OutEpisode], version: str, key: str, file_units: list[tuple[int, int, bool]]
) -> list[VideoJob]:
    """One camera's output files: runs of source video to concatenate, or one whole file to copy."""
    by_file: dict[tuple[int, int], VideoJob] = {}
    for first, end, whole in file_units:
        head = episodes[first]
        slot, span = head.videos[key], head.episode.videos[key]
        assert span.end_s is not None, "video spans are probed before layout"
        job = by_file.get(slot)
        if job is None:
            job = by_file[slot] = VideoJob(key, video_path(version, key, slot), [])
        last = job.runs[-1] if job.runs else None
        if whole or not (
            last is not None
            and not last.whole_file
            and last.source == head.episode.source
            and last.path == span.path
            and abs(last.end_s - span.start_s) < _CONTIGUOUS_S
        ):
            last = VideoRun(head.episode.source, span.path, span.start_s, span.start_s, [], whole)
            job.runs.append(last)
        for e in episodes[first:end]:
            s = e.episode.videos[key]
            assert s.end_s is not None
            last.episodes.append((e.index, s.start_s - last.start_s, s.end_s - s.start_s))
            last.end_s = max(last.end_s, s.end_s)
    return list(by_file.values())


def summary(layout: Layout) -> dict[str, Any]:
    copies = sum(1 for j in layout.video_jobs if j.is_copy)
    return {
        "format_version": layout.version,
        "episodes": len(layout.episodes),
        "frames": layout.frames,
        "tasks": len(layout.tasks),
        "data_files": len(layout.data_jobs),
        "video_files": len(layout.video_jobs),
        "videos_copied": copies,
        "videos_remuxed": len(layout.video_jobs) - copies,
    }
