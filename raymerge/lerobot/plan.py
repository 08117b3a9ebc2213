"""The plan of a run, after `check`: the scans that need tasks (rows and tasks of every data file, video
stream probes), the output layouts, and what the report will say; metadata only, nothing written.

Every failure raises `InvalidInput` naming the dataset, the episode or file, and both values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from raymerge import storage
from raymerge.errors import InvalidInput
from raymerge.lerobot import encode_plan, formats, scan, tasks
from raymerge.lerobot.check import Checked
from raymerge.lerobot.config import Config
from raymerge.lerobot.encode_plan import Encoding
from raymerge.lerobot.layout import Layout, Sizes, plan_layout, summary
from raymerge.lerobot.schema import data_schema
from raymerge.lerobot.source_meta import Episodes, Source
from raymerge.lerobot.tasks_edit import DataEdit, plan_edit
from raymerge.plan import Plan
from raymerge.report import InputReport, Report

if TYPE_CHECKING:
    from raymerge.executor import Executor
    from raymerge.lerobot.video.probe import StreamInfo

# Why an input's frames are not in the output, by operation.
_DROPPED = {"delete_episodes": "frames of deleted episodes"}
# Probed video streams by (source position, path).
Streams = dict[tuple[int, str], "StreamInfo"]


@dataclass
class Output:
    """One dataset to write: at the output root (merge) or at `<output>/<name>` (split)."""

    name: str
    layout: Layout
    info: dict[str, Any]
    schema: pa.Schema
    edit: DataEdit | None = None  # what the data tasks change beyond re-indexing (modify_tasks, recompute_stats)
    encoding: Encoding | None = None  # the videos encoded (convert_image_to_video, reencode_videos)


@dataclass
class LeRobotPlan(Plan[Config]):
    """The checked inputs and, per output dataset, its layout: all `execute` needs."""

    sources: list[Source] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    file_sizes: dict[tuple[int, str], int] = field(default_factory=dict)  # bytes of each source file used


def build(cfg: Config, checked: Checked, executor: Executor) -> LeRobotPlan:
    """Scan, probe and lay out the episodes `checked` selected: the plan of the run."""
    sources = checked.sources
    found, streams = _scan(checked, executor)
    episodes: dict[int, Episodes] = {}
    sizes: dict[int, Sizes] = {}
    for pos, rows in checked.selected.rows_by_source().items():
        episodes[pos] = _with_probed_ends(sources[pos].episodes, pos, rows, streams)
        sizes[pos] = _sizes(episodes[pos], pos, rows, checked.listings[pos], found, streams)
    video_keys = [k for k in formats.video_keys(sources[0].features) if k not in cfg.removed]
    source_tasks = {s.position: s.tasks for s in sources}
    outputs = []
    for name, mine in checked.groups.items():
        layout = plan_layout(
            mine,
            episodes,
            sizes,
            source_tasks,
            checked.version,
            video_keys,
            data_files_size_in_mb=cfg.output.data_files_size_in_mb,
            video_files_size_in_mb=cfg.output.video_files_size_in_mb,
            chunks_size=cfg.output.chunks_size,
        )
        layout, edit = plan_edit(cfg, layout, sources[0])
        info = output_info(sources, cfg.removed)
        info, encoding = encode_plan.plan_output(cfg, sources[0], layout, info)
        if edit is not None and encoding is not None:  # converted images: stats from their videos, not the data
            edit.image_keys = tuple(k for k in edit.image_keys if k not in encode_plan.converted(encoding))
        schema = data_schema(checked.schema, info["features"], checked.version)
        outputs.append(Output(name, layout, info, schema, edit, encoding))
    streams |= index_cut_files(sources, outputs, executor, checked.listings)
    report = _report(cfg, sources, outputs, checked.left_out, streams)
    fingerprints = [storage.fingerprint(s.fs, s.root) for s in sources]
    file_sizes = {(pos, path): checked.listings[pos][path] for pos, path in checked.data_files + checked.video_files}
    return LeRobotPlan(cfg, report, fingerprints, sources, outputs, file_sizes)


def _scan(checked: Checked, executor: Executor) -> tuple[dict[tuple[int, str], scan.EpisodeRows], Streams]:
    """Rows and tasks of every data file and the stream of every video file the selection needs, scanned by
    tasks running at the same time, each checked against the metadata."""
    by_pos = {s.position: s for s in checked.sources}
    executor.progress(
        f"scanning {len(checked.data_files)} data file(s) and probing {len(checked.video_files)} video file(s)"
    )
    data_files = [(by_pos[s].fs, (p, checked.listings[s][p])) for s, p in checked.data_files]
    scanned = scan.submit_batched(executor, tasks.scan_data_files, data_files)
    videos = [(by_pos[s].fs, (p, checked.listings[s][p])) for s, p in checked.video_files]
    probed = scan.submit_batched(executor, tasks.probe_video_files, videos)
    data, probes = scan.settle(scanned, probed)
    found = dict(zip(checked.data_files, data.result(), strict=True))
    for pos, rows in checked.selected.rows_by_source().items():
        eps = by_pos[pos].episodes
        for code in np.unique(eps.data_file[rows]).tolist():
            path = eps.files[code]
            _check_rows(by_pos[pos], rows[eps.data_file[rows] == code], path, found[(pos, path)])
    streams = dict(zip(checked.video_files, probes.result(), strict=True))
    return found, _check_videos(checked.sources, streams, checked.version)


def _allowed_tasks(src: Source) -> np.ndarray:
    """`set * len(tasks) + task_index` for every task index whose task is in an episode task set."""
    ids: dict[str, list[int]] = {}
    for t, task in enumerate(src.tasks):
        ids.setdefault(task, []).append(t)
    n = len(src.tasks)
    return np.array(
        sorted(
            c * n + t
            for c, names in enumerate(src.episodes.task_sets)
            for name in set(names)
            for t in ids.get(name, [])
        ),
        dtype=np.int64,
    )


def _check_rows(src: Source, rows: np.ndarray, path: str, found: scan.EpisodeRows) -> None:
    """The rows' episodes have as many rows in their data file as their length, and only their own tasks."""
    eps = src.episodes
    where = storage.url(src.fs, path)
    n = found.rows_of(eps.index[rows])
    bad = np.flatnonzero(n != eps.length[rows])
    if len(bad):
        r = int(rows[bad[0]])
        raise InvalidInput(
            f"input {src.name}: episode {eps.index[r]} has {n[bad[0]]} rows in {where} "
            f"but its metadata says length {eps.length[r]}"
        )
    mine = np.isin(found.pair_episodes, eps.index[rows])
    pair_rows = rows[np.searchsorted(eps.index[rows], found.pair_episodes[mine])]
    tasks = found.pair_tasks[mine]
    n_tasks = len(src.tasks)
    ok = (tasks >= 0) & (tasks < n_tasks)
    ok[ok] = np.isin(eps.tasks[pair_rows[ok]].astype(np.int64) * n_tasks + tasks[ok], _allowed_tasks(src))
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        r, t = int(pair_rows[i]), int(tasks[i])
        name = repr(src.tasks[t]) if 0 <= t < n_tasks else "not in the tasks file"
        raise InvalidInput(
            f"input {src.name}: episode {eps.index[r]} has task_index {t} ({name}) in {where}, "
            f"not one of its tasks {list(eps.task_sets[eps.tasks[r]])}"
        )


def _durations(eps: Episodes, position: int, streams: Streams) -> np.ndarray:
    """The probed duration of each of the source's files (0 for one not probed, e.g. a data file)."""
    return np.array([s.duration_s if (s := streams.get((position, p))) else 0.0 for p in eps.files])


def _with_probed_ends(eps: Episodes, position: int, rows: np.ndarray, streams: Streams) -> Episodes:
    """The episodes with each used episode's video end known: a v2.1 episode owns its video files, whose
    probed duration is its end (its metadata has none); v3.0 episodes already have theirs."""
    if not eps.whole_files:
        return eps
    duration = _durations(eps, position, streams)
    end_s = {}
    for key, codes in eps.video_file.items():
        end_s[key] = eps.end_s[key].copy()
        end_s[key][rows] = duration[codes[rows]]
    return dataclasses.replace(eps, end_s=end_s)


def _sizes(
    eps: Episodes,
    position: int,
    rows: np.ndarray,
    listing: dict[str, int],
    found: dict[tuple[int, str], scan.EpisodeRows],
    streams: Streams,
) -> Sizes:
    """Each used episode's share of its data file's bytes (by rows) and of its video files' (by duration)."""
    size = np.array([listing.get(p, 0) for p in eps.files], dtype=np.float64)
    file_rows = np.array([int(found[k].rows.sum()) if (k := (position, p)) in found else 0 for p in eps.files])
    data = np.zeros(len(eps))
    codes = eps.data_file[rows]
    data[rows] = size[codes] * eps.length[rows] / np.maximum(file_rows[codes], 1)
    duration = _durations(eps, position, streams)
    video = {}
    for key, all_codes in eps.video_file.items():
        codes = all_codes[rows]
        d = duration[codes]
        share = np.where(d > 0, (eps.end_s[key][rows] - eps.start_s[key][rows]) / np.where(d > 0, d, 1.0), 1.0)
        video[key] = np.zeros(len(eps))
        video[key][rows] = size[codes] * np.clip(share, 0.0, 1.0)
    return Sizes(data, video)


def _check_videos(sources: list[Source], streams: Streams, version: str) -> Streams:
    """Every probed stream against the first one of its camera; a v3.0 output (episodes of different sources
    share a file) also needs equal codec headers."""
    if not streams:
        return {}
    from raymerge.lerobot.video.probe import incompatibilities

    by_pos = {s.position: s for s in sources}
    key_of = {}
    for src in sources:
        for key, codes in src.episodes.video_file.items():
            for code in np.unique(codes).tolist():
                key_of[(src.position, src.episodes.files[code])] = key
    reference: dict[str, tuple[int, str]] = {}
    for f in streams:
        key = key_of[f]
        ref = reference.setdefault(key, f)
        problems = incompatibilities(streams[f], streams[ref], remux=version == formats.V30)
        if problems:
            a, b = by_pos[ref[0]], by_pos[f[0]]
            raise InvalidInput(
                f"input {b.name}: video {storage.url(b.fs, f[1])} ({key}) is not compatible with "
                f"{storage.url(a.fs, ref[1])} of {a.name}: " + "; ".join(problems)
            )
    return streams


def output_info(sources: list[Source], removed: set[str] | None = None) -> dict[str, Any]:
    """info.json fields carried from the first input (features with their names and video stream info, less
    the `removed` ones)."""
    first = sources[0].info
    features = {k: v for k, v in first["features"].items() if k not in (removed or set())}
    return {"robot_type": first.get("robot_type"), "fps": first["fps"], "features": features}


def index_cut_files(
    sources: list[Source], outputs: list[Output], executor: Executor, listings: dict[int, dict[str, int]]
) -> Streams:
    """Groups of pictures of the source videos the layouts cut (not copied or remuxed whole), to predict
    which cuts re-encode: from their sample tables (`moov` boxes), so whole-file work never pays for it."""
    cut = {
        (r.source, r.path): None
        for o in outputs
        for job in o.layout.video_jobs
        if not job.is_copy
        for r in job.runs
        if not r.whole_file
    }
    if not cut:
        return {}
    executor.progress(f"indexing the groups of pictures of {len(cut)} video file(s) the layout cuts")
    by_pos = {s.position: s for s in sources}
    work = [(by_pos[pos].fs, (path, listings[pos][path])) for pos, path in cut]
    found = scan.submit_batched(executor, tasks.index_video_files, work)()
    return dict(zip(cut, found, strict=True))


def planned_videos(layout: Layout, streams: Streams) -> dict[str, Any]:
    """Which output videos `remux.concat` will re-encode part of, and which output episodes that touches."""
    from raymerge.lerobot.video.cut import cut_reencodes

    files, episodes = 0, set[int]()
    for job in layout.video_jobs:
        if job.is_copy:
            continue
        cut = [r for r in job.runs if (g := streams[(r.source, r.path)].gops) and cut_reencodes(g, r.start_s, r.end_s)]
        files += bool(cut)
        episodes.update(e for r in cut for e in r.episodes)
    return {"videos_reencoded": files, "episodes_reencoded": len(episodes), "reencoded_episodes": sorted(episodes)}


def _report(cfg: Config, sources: list[Source], outputs: list[Output], left_out: list[int], streams: Streams) -> Report:
    """The planned report: frames in and out per input, and per output its layout and predicted re-encodes."""
    fs, root = storage.resolve(cfg.output.path, cfg.output.storage_options)
    inputs = []
    for src in sources:
        used = sum(int(o.layout.length[o.layout.source == src.position].sum()) for o in outputs)
        rep = InputReport(src.name, src.url, int(src.episodes.length.sum()), used)
        rep.drop(_DROPPED.get(cfg.operation, "frames of episodes not selected"), rep.rows_in - used)
        inputs.append(rep)
    report = Report("lerobot", cfg.operation, storage.url(fs, root), unit="frames", inputs=inputs)
    report.rows_out = sum(o.layout.frames for o in outputs)
    summaries = {
        o.name: summary(o.layout) | planned_videos(o.layout, streams) | encode_plan.details(o.encoding, o.layout)
        for o in outputs
    }
    if cfg.operation != "split":
        report.details.update(summaries[outputs[0].name])
    else:
        report.details["splits"] = summaries
        for name, s in summaries.items():
            report.details[name] = (
                f"{s['episodes']} episodes, {s['frames']} frames, {s['tasks']} tasks; videos: "
                f"{s['videos_copied']} copied, {s['videos_remuxed']} remuxed ({s['videos_reencoded']} partly "
                f"re-encoded: episodes {s['reencoded_episodes']})"
            )
        report.details["episodes_in_no_split"] = left_out
        if left_out:
            report.warnings.append(f"{len(left_out)} episode(s) are in no split: {left_out[:20]}")
    return report
