"""Run a plan: data and video Ray tasks into staging, stats reduced on the driver, metadata written last."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
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
    numeric: list[data.EpisodeStats] = field(default_factory=list)
    where: dict[int, tuple[int, int]] = field(default_factory=dict)  # episode -> (numeric block, row)
    placements: dict[str, dict[int, tuple[float, float]]] = field(default_factory=dict)
    video_stats: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)
    reencoded: set[int] = field(default_factory=set)
    copied: int = 0
    files: list[str] = field(default_factory=list)

    def add_data(self, results: list[data.DataResult]) -> None:
        for r in results:
            merge_all(self.summaries, r.summaries)
            block = len(self.numeric)
            self.numeric.append(r.episode_stats)
            for row, ep in enumerate(r.episode_stats.episodes.tolist()):
                self.where[ep] = (block, row)
            self.files.append(r.path)

    def numeric_stats(self, episode: int) -> dict[str, dict[str, Any]]:
        found = self.where.get(episode)
        return self.numeric[found[0]].row(found[1]) if found else {}

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


class VisualPool:
    """Image/video stats pooled over episodes one at a time; none for a feature some episode has no stats for."""

    def __init__(self) -> None:
        self.pooled: dict[str, Summary | None] = {}

    def add(self, key: str, stats: dict[str, Any] | None) -> None:
        one = Summary.from_stats(stats) if stats and all(k in stats for k in MOMENTS) else None
        if key not in self.pooled:
            self.pooled[key] = one
        elif self.pooled[key] is not None:
            self.pooled[key] = None if one is None else self.pooled[key].merge(one)

    def stats(self, key: str) -> dict[str, Any] | None:
        pooled = self.pooled.get(key)
        return pooled.to_stats(with_quantiles=False) if pooled is not None else None


def episode_stats(out: Output, got: Collected, index: int, version: str, recompute: bool) -> dict[str, Any]:
    """One episode's stats in feature order: numeric from the data, visual from the source (or decoded)."""
    e = out.layout.episodes[index]
    numeric = got.numeric_stats(e.index)
    visual = e.episode.visual_stats() | (got.video_stats.get(e.index, {}) if recompute else {})
    stats: dict[str, Any] = {}
    for key in out.info["features"]:
        if key in numeric:
            stats[key] = numeric[key]
        elif key in visual:
            stats[key] = visual[key]
        else:
            continue
        if version == meta.V21:
            stats[key] = {k: v for k, v in stats[key].items() if k in MOMENTS}
    return stats


def per_episode_stats(out: Output, got: Collected, recompute: bool, pool: VisualPool) -> Iterator[dict[str, Any]]:
    """Each output episode's stats in order, made one at a time (the driver never holds them all as
    dicts); their visual stats are folded into `pool` on the way."""
    visual_keys = [k for k, ft in out.info["features"].items() if ft.get("dtype") in meta.VISUAL]
    for i in range(len(out.layout.episodes)):
        stats = episode_stats(out, got, i, out.layout.version, recompute)
        for key in visual_keys:
            pool.add(key, stats.get(key))
        yield stats


def global_stats(out: Output, got: Collected, pool: VisualPool) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    for key, ft in out.info["features"].items():
        if key in got.summaries:
            stats[key] = got.summaries[key].to_stats(with_quantiles=True)
        elif ft.get("dtype") in meta.VISUAL and (pooled := pool.stats(key)) is not None:
            stats[key] = pooled
    return stats


def _num(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def write_metadata(out: Output, got: Collected, fs: Any, root: str, options: Any, recompute: bool) -> list[str]:
    """info, episodes, tasks and stats of one output dataset; returns the paths written (relative)."""
    layout = out.layout
    version = layout.version
    pool = VisualPool()
    per_episode = per_episode_stats(out, got, recompute, pool)
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
            ({"episode_index": e.index, "stats": s} for e, s in zip(layout.episodes, per_episode, strict=True)),
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
    meta.write_json(fs, storage.join(root, meta.STATS), global_stats(out, got, pool))
    meta.write_json(fs, storage.join(root, meta.INFO), info)
    return written


EPISODE_BLOCK = 512  # episode rows (about 25 KB each as dicts) turned into Arrow at a time


def write_v30_episodes(
    out: Output, got: Collected, per_episode: Iterable[dict[str, Any]], fs: Any, root: str, options: Any
) -> list[str]:
    blocks, rows = [], []
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
        if len(rows) == EPISODE_BLOCK:
            blocks.append(pa.Table.from_pylist(rows))
            rows = []
    if rows or not blocks:
        blocks.append(pa.Table.from_pylist(rows))
    table = pa.concat_tables(blocks, promote_options="default")
    n_files = max(1, math.ceil(table.nbytes / (options.data_files_size_in_mb * 1024**2)))
    bounds = np.linspace(0, table.num_rows, n_files + 1).astype(int)
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
