"""LeRobot robot datasets (v2.1 and v3.0): merge with re-indexing and remuxed videos, split, convert."""

from __future__ import annotations

from typing import Any

import numpy as np
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
    eps = src.episodes
    return {
        "format": "lerobot",
        "version": src.version,
        "fps": src.info["fps"],
        "robot_type": src.info.get("robot_type"),
        "episodes": len(eps),
        "frames": int(eps.length.sum()),
        "tasks": src.tasks,
        "cameras": [k for k, f in features.items() if f.get("dtype") in meta.VISUAL],
        "features": {k: {"dtype": f.get("dtype"), "shape": list(f.get("shape", []))} for k, f in features.items()},
        "files": {
            "data": len(np.unique(eps.data_file)),
            "videos": len(np.unique(np.concatenate([np.zeros(0, np.int32), *eps.video_file.values()]))),
        },
    }


def _episode_record(src: meta.Source, row: int) -> dict[str, Any]:
    eps = src.episodes
    return {
        "episode_index": int(eps.index[row]),
        "length": int(eps.length[row]),
        "tasks": list(eps.task_sets[eps.tasks[row]]),
        "data_file": _relative(src, eps.data_path(row)),
        "videos": {
            k: {
                "file": _relative(src, eps.video_path(k, row)),
                "from_timestamp": float(eps.start_s[k][row]),
                "to_timestamp": None if np.isnan(eps.end_s[k][row]) else float(eps.end_s[k][row]),
            }
            for k in eps.video_file
        },
    }


def preview(fs: AbstractFileSystem, path: str, n: int) -> list[dict[str, Any]]:
    src = meta.read_source(0, storage.basename(path), fs, path)
    return [_episode_record(src, row) for row in range(min(n, len(src.episodes)))]


def preview_config(cfg: Config, n: int) -> list[dict[str, Any]]:
    """The first n output episodes: where each comes from and its new indices (metadata only, no Ray)."""
    sources = load_sources(cfg)
    groups, _ = choose(cfg, sources)
    out: list[dict[str, Any]] = []
    for name, chosen in groups.items():
        frame = 0
        for i, (pos, row) in enumerate(zip(chosen.source.tolist(), chosen.row.tolist(), strict=True)):
            if len(out) == n:
                return out
            eps = sources[pos].episodes
            length = int(eps.length[row])
            record = {"split": name} if name else {}
            out.append(
                record
                | {
                    "episode_index": i,
                    "index_from": frame,
                    "length": length,
                    "tasks": list(eps.task_sets[eps.tasks[row]]),
                    "source": sources[pos].name,
                    "source_episode": int(eps.index[row]),
                }
            )
            frame += length
    return out
