"""Run a plan: data and video Ray tasks into staging, stats reduced on the driver, metadata written last."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from raymerge import storage
from raymerge.lerobot import data, meta, videos
from raymerge.lerobot.layout import summary
from raymerge.lerobot.plan import LeRobotPlan, Output
from raymerge.lerobot.scan import batches
from raymerge.lerobot.stats import MOMENTS, Summary, merge_all
from raymerge.report import Progress, Report
from raymerge.runtime import cluster_cpus
from raymerge.storage import Staging


@dataclass
class Collected:
    """What the tasks of one output dataset returned: stats pieces and video placements."""

    summaries: dict[str, Summary] = field(default_factory=dict)
    episode_stats: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)
    placements: dict[str, dict[int, tuple[float, float]]] = field(default_factory=dict)
    video_stats: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)
    reencoded: set[int] = field(default_factory=set)
    copied: int = 0
    files: list[str] = field(default_factory=list)

    def add_data(self, results: list[data.DataResult]) -> None:
        for r in results:
            merge_all(self.summaries, r.summaries)
            for ep, stats in r.episode_stats.items():
                self.episode_stats.setdefault(ep, {}).update(stats)
            self.files.append(r.path)

    def add_videos(self, results: list[videos.VideoResult]) -> None:
        for r in results:
            self.placements.setdefault(r.key, {}).update(r.placements)
            for ep, stats in r.stats.items():
                self.video_stats.setdefault(ep, {})[r.key] = stats
            self.reencoded.update(r.reencoded)
            self.copied += r.copied
            self.files.append(r.path)


def _root(staging: Staging, out: Output) -> str:
    return storage.join(staging.path, out.name) if out.name else staging.path


def execute(plan: LeRobotPlan, staging: Staging, progress: Progress) -> Report:
    import ray

    cfg = plan.config
    fs_of = ray.put({s.position: s.fs for s in plan.sources})
    parallelism = cluster_cpus() * 4
    write_data = ray.remote(data.write_batch)
    write_videos = ray.remote(videos.write_batch)
    pending: dict[Any, tuple[int, str]] = {}
    for i, out in enumerate(plan.outputs):
        root = _root(staging, out)
        layout = out.layout
        features = {k: tuple(out.info["features"][k]["shape"]) for k in meta.numeric_keys(out.info["features"])}
        for batch in batches(layout.data_jobs, parallelism):
            ref = write_data.remote(
                batch, fs_of, layout.task_maps, out.schema, staging.fs, root, features, layout.version == meta.V30
            )
            pending[ref] = (i, "data")
        lengths = {e.index: e.episode.length for e in layout.episodes} if cfg.recompute_video_stats else {}
        # one task per output video, longest first, so that the last ones to finish are short
        for job in sorted(layout.video_jobs, key=lambda j: -sum(r.end_s - r.start_s for r in j.runs)):
            ref = write_videos.remote([job], fs_of, staging.fs, root, lengths, float(out.info["fps"]))
            pending[ref] = (i, "video")
    collected = [Collected() for _ in plan.outputs]
    total, done = len(pending), 0
    progress(
        f"writing {sum(len(o.layout.data_jobs) for o in plan.outputs)} data and "
        f"{sum(len(o.layout.video_jobs) for o in plan.outputs)} video file(s) in {total} task(s)"
    )
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            i, kind = pending.pop(ref)
            results = ray.get(ref)
            if kind == "data":
                collected[i].add_data(results)
            else:
                collected[i].add_videos(results)
            done += 1
            if done == total or done % max(1, total // 10) == 0:
                progress(f"written {done}/{total} tasks")
    report = plan.report
    report.files_written = []
    details: dict[str, Any] = {}
    for out, got in zip(plan.outputs, collected, strict=True):
        root = _root(staging, out)
        written = write_metadata(out, got, staging.fs, root, cfg.output, cfg.recompute_video_stats)
        prefix = f"{out.name}/" if out.name else ""
        report.files_written.extend(prefix + f for f in sorted(got.files) + written)
        s = summary(out.layout) | {
            "videos_copied": got.copied,
            "videos_remuxed": len(out.layout.video_jobs) - got.copied,
            "episodes_reencoded": len(got.reencoded),
            "reencoded_episodes": sorted(got.reencoded),
        }
        details[out.name] = s
    if len(plan.outputs) == 1 and not plan.outputs[0].name:
        report.details.update(details[""])
    else:
        report.details["splits"] = details
    report.details["episodes_reencoded"] = sum(len(c.reencoded) for c in collected)
    report.status = "ok"
    return report


def _pooled(stats: list[dict[str, Any]]) -> dict[str, Any] | None:
    summaries = [Summary.from_stats(s) for s in stats if s and all(k in s for k in MOMENTS)]
    if not summaries or len(summaries) != len(stats):
        return None
    pooled = summaries[0]
    for s in summaries[1:]:
        pooled = pooled.merge(s)
    return pooled.to_stats(with_quantiles=False)


def episode_stats(out: Output, got: Collected, index: int, version: str, recompute: bool) -> dict[str, Any]:
    """One episode's stats in feature order: numeric from the data, visual from the source (or decoded)."""
    e = out.layout.episodes[index]
    visual = got.video_stats.get(e.index, {}) if recompute else {}
    stats: dict[str, Any] = {}
    for key in out.info["features"]:
        if key in got.episode_stats.get(e.index, {}):
            stats[key] = got.episode_stats[e.index][key]
        elif key in visual:
            stats[key] = visual[key]
        elif key in e.episode.visual_stats:
            stats[key] = e.episode.visual_stats[key]
        else:
            continue
        if version == meta.V21:
            stats[key] = {k: v for k, v in stats[key].items() if k in MOMENTS}
    return stats


def global_stats(out: Output, got: Collected, per_episode: list[dict[str, Any]]) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    for key, ft in out.info["features"].items():
        if key in got.summaries:
            stats[key] = got.summaries[key].to_stats(with_quantiles=True)
        elif ft.get("dtype") in meta.VISUAL:
            pooled = _pooled([ep.get(key, {}) for ep in per_episode])
            if pooled is not None:
                stats[key] = pooled
    return stats


def _num(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def write_metadata(out: Output, got: Collected, fs: Any, root: str, options: Any, recompute: bool) -> list[str]:
    """info, episodes, tasks and stats of one output dataset; returns the paths written (relative)."""
    layout = out.layout
    version = layout.version
    per_episode = [episode_stats(out, got, i, version, recompute) for i in range(len(layout.episodes))]
    video_keys = meta.video_keys(out.info["features"])
    n_eps = len(layout.episodes)
    info: dict[str, Any] = {
        "codebase_version": version,
        "robot_type": out.info["robot_type"],
        "total_episodes": n_eps,
        "total_frames": layout.frames,
        "total_tasks": len(layout.tasks),
    }
    written = [meta.INFO, meta.STATS]
    if version == meta.V21:
        info |= {
            "total_videos": n_eps * len(video_keys),
            "total_chunks": math.ceil(n_eps / options.chunks_size),
            "chunks_size": options.chunks_size,
        }
        meta.write_jsonl(
            fs,
            storage.join(root, meta.V21_EPISODES),
            [
                {"episode_index": e.index, "tasks": list(e.episode.tasks), "length": e.episode.length}
                for e in layout.episodes
            ],
        )
        meta.write_jsonl(
            fs,
            storage.join(root, meta.V21_EPISODES_STATS),
            [{"episode_index": e.index, "stats": s} for e, s in zip(layout.episodes, per_episode, strict=True)],
        )
        meta.write_jsonl(
            fs, storage.join(root, meta.V21_TASKS), [{"task_index": i, "task": t} for i, t in enumerate(layout.tasks)]
        )
        written += [meta.V21_EPISODES, meta.V21_EPISODES_STATS, meta.V21_TASKS]
        paths = {"data_path": meta.V21_DATA_PATH, "video_path": meta.V21_VIDEO_PATH if video_keys else None}
    else:
        info |= {
            "chunks_size": options.chunks_size,
            "data_files_size_in_mb": _num(options.data_files_size_in_mb),
            "video_files_size_in_mb": _num(options.video_files_size_in_mb),
        }
        written += write_v30_episodes(out, got, per_episode, fs, root, options)
        meta.write_parquet(fs, storage.join(root, meta.V30_TASKS), meta.tasks_table(layout.tasks))
        written.append(meta.V30_TASKS)
        paths = {"data_path": meta.V30_DATA_PATH, "video_path": meta.V30_VIDEO_PATH if video_keys else None}
    info |= {"fps": out.info["fps"], "splits": {"train": f"0:{n_eps}"}, **paths, "features": out.info["features"]}
    meta.write_json(fs, storage.join(root, meta.STATS), global_stats(out, got, per_episode))
    meta.write_json(fs, storage.join(root, meta.INFO), info)
    return written


def write_v30_episodes(
    out: Output, got: Collected, per_episode: list[dict[str, Any]], fs: Any, root: str, options: Any
) -> list[str]:
    rows = []
    for e, stats in zip(out.layout.episodes, per_episode, strict=True):
        row: dict[str, Any] = {
            "episode_index": e.index,
            "tasks": list(e.episode.tasks),
            "length": e.episode.length,
            "data/chunk_index": e.data[0],
            "data/file_index": e.data[1],
            "dataset_from_index": e.frame_from,
            "dataset_to_index": e.frame_from + e.episode.length,
        }
        for key, slot in e.videos.items():
            start, end = got.placements[key][e.index]
            row |= {
                f"videos/{key}/chunk_index": slot[0],
                f"videos/{key}/file_index": slot[1],
                f"videos/{key}/from_timestamp": start,
                f"videos/{key}/to_timestamp": end,
            }
        rows.append(row | meta.flat_stats(stats))
    table = pa.Table.from_pylist(rows)
    n_files = max(1, math.ceil(table.nbytes / (options.data_files_size_in_mb * 1024**2)))
    bounds = np.linspace(0, len(rows), n_files + 1).astype(int)
    written = []
    for n in range(n_files):
        chunk, file = divmod(n, options.chunks_size)
        part = table.slice(bounds[n], bounds[n + 1] - bounds[n])
        part = part.append_column("meta/episodes/chunk_index", pa.array([chunk] * part.num_rows, pa.int64()))
        part = part.append_column("meta/episodes/file_index", pa.array([file] * part.num_rows, pa.int64()))
        rel = meta.V30_EPISODES_PATH.format(chunk_index=chunk, file_index=file)
        meta.write_parquet(fs, storage.join(root, rel), part)
        written.append(rel)
    return written
