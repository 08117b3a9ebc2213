"""LeRobot robot datasets (v2.1 and v3.0): merge with re-indexing and remuxed videos, split, convert."""

from __future__ import annotations

from typing import Any

from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.lerobot import meta, scan
from raymerge.lerobot.config import Config
from raymerge.lerobot.execute import execute
from raymerge.lerobot.plan import LeRobotPlan, build, choose, load_sources
from raymerge.report import Progress
from raymerge.runtime import cluster_cpus

__all__ = ["Config", "detect", "execute", "inspect", "plan", "preview", "preview_config"]


def plan(cfg: Config, progress: Progress) -> LeRobotPlan:
    scan.warm_up(cluster_cpus())
    return build(cfg, progress, cluster_cpus() * 4)


def detect(fs: AbstractFileSystem, path: str) -> bool:
    return storage.exists(fs, storage.join(path, meta.INFO))


def _relative(src: meta.Source, path: str) -> str:
    return path[len(src.root) + 1 :]


def inspect(fs: AbstractFileSystem, path: str) -> dict[str, Any]:
    src = meta.read_source(0, storage.basename(path), fs, path)
    features = src.features
    return {
        "format": "lerobot",
        "version": src.version,
        "fps": src.info["fps"],
        "robot_type": src.info.get("robot_type"),
        "episodes": len(src.episodes),
        "frames": sum(e.length for e in src.episodes),
        "tasks": src.tasks,
        "cameras": [k for k, f in features.items() if f.get("dtype") in meta.VISUAL],
        "features": {k: {"dtype": f.get("dtype"), "shape": list(f.get("shape", []))} for k, f in features.items()},
        "files": {
            "data": len({e.data_path for e in src.episodes}),
            "videos": len({s.path for e in src.episodes for s in e.videos.values()}),
        },
    }


def _episode_record(src: meta.Source, ep: meta.SourceEpisode) -> dict[str, Any]:
    return {
        "episode_index": ep.index,
        "length": ep.length,
        "tasks": list(ep.tasks),
        "data_file": _relative(src, ep.data_path),
        "videos": {
            k: {"file": _relative(src, s.path), "from_timestamp": s.start_s, "to_timestamp": s.end_s}
            for k, s in ep.videos.items()
        },
    }


def preview(fs: AbstractFileSystem, path: str, n: int) -> list[dict[str, Any]]:
    src = meta.read_source(0, storage.basename(path), fs, path)
    return [_episode_record(src, ep) for ep in src.episodes[:n]]


def preview_config(cfg: Config, n: int) -> list[dict[str, Any]]:
    """The first n output episodes: where each comes from and its new indices (metadata only, no Ray)."""
    sources = load_sources(cfg)
    groups, _ = choose(cfg, sources)
    names = {s.position: s.name for s in sources}
    out: list[dict[str, Any]] = []
    for name, episodes in groups.items():
        frame = 0
        for i, ep in enumerate(episodes):
            if len(out) == n:
                return out
            record = {"split": name} if name else {}
            out.append(
                record
                | {
                    "episode_index": i,
                    "index_from": frame,
                    "length": ep.length,
                    "tasks": list(ep.tasks),
                    "source": names[ep.source],
                    "source_episode": ep.index,
                }
            )
            frame += ep.length
    return out
