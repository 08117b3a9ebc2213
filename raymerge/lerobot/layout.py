"""Where every output episode, frame and video segment goes: offsets, tasks, files. Plain values only.

Given the selected source episodes in output order (with their estimated byte sizes), this decides new
indices, the task table, and the jobs the writers run: one per output parquet file and one per output
video file. v2.1 puts each episode in its own files; v3.0 packs consecutive episodes into files up to a
size cap, and chunk folders up to `chunks_size` files. Episodes are columns throughout: a plan costs tens of
bytes per episode, not objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from raymerge.lerobot import formats
from raymerge.lerobot.arrays import Interned, runs
from raymerge.lerobot.selection import SelectedEpisodes
from raymerge.lerobot.source_meta import Episodes

# Two episodes of one source video are contiguous when one ends where the next starts.
_CONTIGUOUS_S = 1e-4


@dataclass
class Sizes:
    """Estimated output bytes of a source's episodes (by row): of data, and of video per camera."""

    data: np.ndarray
    video: dict[str, np.ndarray]


@dataclass
class DataRun:
    """Output episodes `first`, `first + 1`, ... of one output file, read from one source file."""

    source: int
    path: str
    src_episodes: np.ndarray  # their episode_index in the source
    lengths: np.ndarray
    first: int
    frame_from: int  # output index of the run's first frame


@dataclass
class DataJob:
    """One output data file: the runs of source episodes it gathers, in order."""

    path: str  # relative to the output dataset root
    runs: list[DataRun]


@dataclass
class VideoRun:
    """A stretch of one source video holding output episodes `first`, `first + 1`, ...: each one's offset
    from the run's start and its duration, in seconds."""

    source: int
    path: str
    start_s: float
    end_s: float
    first: int
    offsets: np.ndarray
    durations: np.ndarray
    whole_file: bool = False

    @property
    def episodes(self) -> range:
        """The output episodes the run holds."""
        return range(self.first, self.first + len(self.offsets))


@dataclass
class VideoJob:
    """One output video file of camera `key`: the runs of source video it concatenates, in order."""

    key: str
    path: str
    runs: list[VideoRun]

    @property
    def is_copy(self) -> bool:
        """Whether the file is one whole source file, copied as it is."""
        return len(self.runs) == 1 and self.runs[0].whole_file


@dataclass
class Layout:
    """Output episode i comes from row `row[i]` of source `source[i]`; its slots are (chunk, file) for v3.0,
    (chunk, episode) for v2.1."""

    version: str
    source: np.ndarray  # (E,) int32
    row: np.ndarray  # (E,) int64
    length: np.ndarray  # (E,) int64
    frame_from: np.ndarray  # (E,) int64
    episode_tasks: np.ndarray  # (E,) int32 into task_sets
    task_sets: list[tuple[str, ...]]
    data_slots: np.ndarray  # (E, 2) int64
    video_slots: dict[str, np.ndarray]  # per camera (E, 2) int64
    tasks: list[str]
    task_maps: dict[int, list[int]]
    data_jobs: list[DataJob]
    video_jobs: list[VideoJob]

    @property
    def n_episodes(self) -> int:
        """How many episodes the output holds."""
        return len(self.row)

    @property
    def frames(self) -> int:
        """How many frames the output holds."""
        return int(self.length.sum())


@dataclass
class CameraSpans:
    """One camera's video of each selected episode, by output position."""

    file: np.ndarray  # (E,) int64 into the layout's (source, path) files
    start_s: np.ndarray
    end_s: np.ndarray
    size: np.ndarray  # estimated bytes
    file_episodes: np.ndarray  # how many episodes the episode's source file holds
    owned: np.ndarray  # (E,) bool: the episode owns its file (v2.1 sources)


class EpisodeRuns(NamedTuple):
    """Runs of consecutive output positions [first, end), and whether each is a whole source file."""

    first: np.ndarray  # (R,) int64
    end: np.ndarray  # (R,) int64
    whole: np.ndarray  # (R,) bool


def _gather(selected: SelectedEpisodes, per_source: dict[int, np.ndarray], dtype: Any) -> np.ndarray:
    """Each selected episode's value from per-source arrays indexed by row."""
    out = np.zeros(len(selected), dtype=dtype)
    for pos, values in per_source.items():
        mask = selected.source == pos
        out[mask] = values[selected.row[mask]]
    return out


def camera_spans(
    selected: SelectedEpisodes, episodes: dict[int, Episodes], sizes: dict[int, Sizes], key: str, files: Interned
) -> CameraSpans:
    """Camera `key` of the selected episodes; `files` numbers the (source, path) video files."""
    used = {pos: episodes[pos] for pos in np.unique(selected.source).tolist()}
    codes = {pos: np.array([files.code((pos, p)) for p in ep.files], dtype=np.int64) for pos, ep in used.items()}
    held = {
        pos: np.bincount(ep.video_file[key], minlength=len(ep.files))[ep.video_file[key]] for pos, ep in used.items()
    }
    return CameraSpans(
        file=_gather(selected, {pos: codes[pos][ep.video_file[key]] for pos, ep in used.items()}, np.int64),
        start_s=_gather(selected, {pos: ep.start_s[key] for pos, ep in used.items()}, np.float64),
        end_s=_gather(selected, {pos: ep.end_s[key] for pos, ep in used.items()}, np.float64),
        size=_gather(selected, {pos: sizes[pos].video[key] for pos in used}, np.float64),
        file_episodes=_gather(selected, held, np.int64),
        owned=_gather(selected, {pos: np.full(len(ep), ep.whole_files) for pos, ep in used.items()}, bool),
    )


def union_tasks(
    selected: SelectedEpisodes, episodes: dict[int, Episodes], source_tasks: dict[int, list[str]]
) -> tuple[list[str], dict[int, list[int]]]:
    """Tasks used by the selected episodes, in the sources' order of first appearance; old -> new per source."""
    tasks: list[str] = []
    position: dict[str, int] = {}
    maps: dict[int, list[int]] = {}
    for src in np.unique(selected.source).tolist():
        ep = episodes[src]
        codes = np.unique(ep.tasks[selected.row[selected.source == src]])
        used = {t for c in codes.tolist() for t in ep.task_sets[c]}
        for task in source_tasks[src]:
            if task in used and task not in position:
                position[task] = len(tasks)
                tasks.append(task)
        maps[src] = [position.get(t, -1) if t in used else -1 for t in source_tasks[src]]
    return tasks, maps


def _pack(sizes: np.ndarray, cap_bytes: float) -> np.ndarray:
    """File number per item: consecutive items share a file until adding one would pass the cap."""
    out, current, used = np.zeros(len(sizes), dtype=np.int64), 0, 0.0
    for i, size in enumerate(sizes.tolist()):
        if used > 0 and used + size > cap_bytes:
            current, used = current + 1, 0.0
        out[i] = current
        used += size
    return out


def _chunk_file(n: np.ndarray, chunks_size: int) -> np.ndarray:
    """(chunk, file) slots of file numbers: `chunks_size` files per chunk folder."""
    return np.stack([n // chunks_size, n % chunks_size], axis=1)


def whole_file_runs(video: CameraSpans) -> EpisodeRuns:
    """Runs of selected positions: a whole source file when all of its episodes come consecutively in their
    file order (it can be copied as it is), single episodes otherwise."""
    firsts, ends = runs(video.file)
    if not len(firsts):
        return EpisodeRuns(firsts, ends, np.zeros(0, dtype=bool))
    before_next = np.ones(len(video.file), dtype=bool)  # each episode ends before the next starts
    before_next[:-1] = video.end_s[:-1] <= video.start_s[1:] + _CONTIGUOUS_S
    before_next[ends - 1] = True  # a run's last episode is not compared with the next run's first
    ordered = np.logical_and.reduceat(before_next, firsts)
    return _episode_by_episode(EpisodeRuns(firsts, ends, (ends - firsts == video.file_episodes[firsts]) & ordered))


def _episode_by_episode(found: EpisodeRuns) -> EpisodeRuns:
    """Runs that are not `whole` become one run per episode."""
    firsts, ends, keep = found
    counts = np.where(keep, 1, ends - firsts)
    starts = np.repeat(firsts, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    return EpisodeRuns(
        starts, np.where(np.repeat(keep, counts), np.repeat(ends, counts), starts + 1), np.repeat(keep, counts)
    )


def _packed_video_runs(video: CameraSpans, cap_bytes: float) -> tuple[EpisodeRuns, np.ndarray]:
    """v3.0 runs of one camera and the output file number of each: whole source files are kept whole unless
    they pass the cap alone (then their episodes are packed one by one)."""
    found = whole_file_runs(video)
    sizes = np.add.reduceat(video.size, found.first) if len(found.first) else np.zeros(0)
    too_big = (found.end - found.first > 1) & (sizes > cap_bytes)
    found = _episode_by_episode(found._replace(whole=found.whole & ~too_big))
    sizes = np.add.reduceat(video.size, found.first) if len(found.first) else np.zeros(0)
    return found, _pack(sizes, cap_bytes)


def plan_layout(
    selected: SelectedEpisodes,
    episodes: dict[int, Episodes],
    sizes: dict[int, Sizes],
    source_tasks: dict[int, list[str]],
    version: str,
    video_keys: list[str],
    *,
    data_files_size_in_mb: float,
    video_files_size_in_mb: float,
    chunks_size: int,
) -> Layout:
    """Where the selected episodes go in one output dataset of `version`: indices, tasks, files and the jobs
    that write them. `episodes` must have every selected episode's video end (probed for v2.1 sources)."""
    tasks, task_maps = union_tasks(selected, episodes, source_tasks)
    n = len(selected)
    used = {pos: episodes[pos] for pos in np.unique(selected.source).tolist()}
    length = _gather(selected, {pos: ep.length for pos, ep in used.items()}, np.int64)
    frame_from = (np.cumsum(length) - length).astype(np.int64)
    task_sets = Interned()
    codes = {pos: np.array([task_sets.code(t) for t in ep.task_sets], np.int32) for pos, ep in used.items()}
    episode_tasks = _gather(selected, {pos: codes[pos][ep.tasks] for pos, ep in used.items()}, np.int32)
    files = Interned()
    video = {k: camera_spans(selected, episodes, sizes, k, files) for k in video_keys}
    video_slots: dict[str, np.ndarray] = {}
    video_runs: dict[str, EpisodeRuns] = {}
    if version == formats.V21:
        positions = np.arange(n, dtype=np.int64)
        data_slots = np.stack([positions // chunks_size, positions], axis=1)
        for k in video:
            video_runs[k] = EpisodeRuns(positions, positions + 1, video[k].owned)
            video_slots[k] = data_slots
    else:
        data_bytes = _gather(selected, {pos: sizes[pos].data for pos in used}, np.float64)
        data_slots = _chunk_file(_pack(data_bytes, data_files_size_in_mb * 1024**2), chunks_size)
        for k in video:
            video_runs[k], numbers = _packed_video_runs(video[k], video_files_size_in_mb * 1024**2)
            video_slots[k] = np.repeat(
                _chunk_file(numbers, chunks_size), video_runs[k].end - video_runs[k].first, axis=0
            )
    layout = Layout(
        version=version,
        source=selected.source,
        row=selected.row,
        length=length,
        frame_from=frame_from,
        episode_tasks=episode_tasks,
        task_sets=task_sets.values,
        data_slots=data_slots.reshape(-1, 2),
        video_slots=video_slots,
        tasks=tasks,
        task_maps=task_maps,
        data_jobs=[],
        video_jobs=[],
    )
    layout.data_jobs = data_jobs(layout, episodes)
    layout.video_jobs = [job for k in video for job in video_jobs(layout, k, video[k], video_runs[k], files.values)]
    return layout


def data_jobs(layout: Layout, episodes: dict[int, Episodes]) -> list[DataJob]:
    """One job per output data file, its runs each from one source file."""
    if not layout.n_episodes:
        return []
    files = Interned()
    file = np.zeros(layout.n_episodes, dtype=np.int64)
    for pos in np.unique(layout.source).tolist():
        mask = layout.source == pos
        codes = np.array([files.code((pos, p)) for p in episodes[pos].files], dtype=np.int64)
        file[mask] = codes[episodes[pos].data_file[layout.row[mask]]]
    slot = layout.data_slots[:, 0] * (int(layout.data_slots[:, 1].max()) + 1) + layout.data_slots[:, 1]
    jobs: dict[int, DataJob] = {}
    firsts, ends = runs(file * (int(slot.max()) + 1) + slot)  # a run: one source file into one output file
    for a, b in zip(firsts.tolist(), ends.tolist(), strict=True):
        chunk, number = layout.data_slots[a].tolist()
        job = jobs.setdefault(int(slot[a]), DataJob(formats.data_path(layout.version, (chunk, number)), []))
        source, path = files.values[file[a]]
        src_rows = layout.row[a:b]
        job.runs.append(
            DataRun(source, path, episodes[source].index[src_rows], layout.length[a:b], a, int(layout.frame_from[a]))
        )
    return list(jobs.values())


@dataclass
class _GrowingRun:
    """A run of one source video file while the next pieces of the same output file extend it."""

    job: VideoJob
    file: int  # into the layout's (source, path) video files
    start_s: float
    end_s: float
    first: int  # output positions [first, end)
    end: int
    whole: bool


def video_jobs(
    layout: Layout, key: str, video: CameraSpans, pieces: EpisodeRuns, files: list[tuple[int, str]]
) -> list[VideoJob]:
    """One camera's output files: runs of source video to concatenate, or one whole file to copy. Consecutive
    pieces of one source file that follow each other in it become one run."""
    by_file: dict[tuple[int, int], VideoJob] = {}
    grown: list[_GrowingRun] = []
    for first, end, whole in zip(pieces.first.tolist(), pieces.end.tolist(), pieces.whole.tolist(), strict=True):
        slot = tuple(layout.video_slots[key][first].tolist())
        start, stop = float(video.start_s[first]), float(video.end_s[first:end].max())
        if np.isnan(video.end_s[first:end]).any():
            raise AssertionError("video spans are probed before layout")
        job = by_file.get(slot)
        if job is None:
            job = by_file[slot] = VideoJob(key, formats.video_path(layout.version, key, slot), [])
        last = grown[-1] if grown and grown[-1].job is job else None
        follows = (
            last is not None
            and not last.whole
            and last.file == video.file[first]
            and abs(last.end_s - start) < _CONTIGUOUS_S
        )
        if whole or not follows:
            last = _GrowingRun(job, int(video.file[first]), start, start, first, first, whole)
            grown.append(last)
        assert last is not None
        last.end_s, last.end = max(last.end_s, stop), end
    for run in grown:
        source, path = files[run.file]
        offsets = video.start_s[run.first : run.end] - run.start_s
        durations = video.end_s[run.first : run.end] - video.start_s[run.first : run.end]
        run.job.runs.append(
            VideoRun(source, path, run.start_s, run.end_s, run.first, offsets, durations, bool(run.whole))
        )
    return list(by_file.values())


def summary(layout: Layout) -> dict[str, Any]:
    """What the plan and the report say of a layout: counts of episodes, frames, tasks and files."""
    copies = sum(1 for j in layout.video_jobs if j.is_copy)
    return {
        "format_version": layout.version,
        "episodes": layout.n_episodes,
        "frames": layout.frames,
        "tasks": len(layout.tasks),
        "data_files": len(layout.data_jobs),
        "video_files": len(layout.video_jobs),
        "videos_copied": copies,
        "videos_remuxed": len(layout.video_jobs) - copies,
    }
