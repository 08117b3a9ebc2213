"""What a LeRobot dataset is and holds, from its metadata only: `detect`, `inspect`, `preview` of a folder,
and `preview_config`, the first episodes a config would write."""

from __future__ import annotations

from typing import Any

import numpy as np
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.lerobot import formats
from raymerge.lerobot.check import Checked
from raymerge.lerobot.config import TasksEdit
from raymerge.lerobot.source_meta import Source, read_source
from raymerge.lerobot.tasks_edit import episode_tasks


def detect(fs: AbstractFileSystem, path: str) -> bool:
    """A LeRobot dataset has `meta/info.json`."""
    return storage.exists(fs, storage.join(path, formats.INFO))


def _relative(src: Source, path: str) -> str:
    """A path of the dataset as it is named inside it."""
    return path[len(src.root) + 1 :]


def inspect(fs: AbstractFileSystem, path: str) -> dict[str, Any]:
    """Version, fps, robot, counts of episodes, frames and files, tasks, cameras and features."""
    src = read_source(0, storage.basename(path), fs, path)
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
        "cameras": [k for k, f in features.items() if f.get("dtype") in formats.CAMERA_DTYPES],
        "features": {k: {"dtype": f.get("dtype"), "shape": list(f.get("shape", []))} for k, f in features.items()},
        "files": {
            "data": len(np.unique(eps.data_file)),
            "videos": len(np.unique(np.concatenate([np.zeros(0, np.int32), *eps.video_file.values()]))),
        },
    }


def _episode_record(src: Source, row: int) -> dict[str, Any]:
    """One episode as `preview` shows it: index, length, tasks, and where its data and videos are."""
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
    """The dataset's first `n` episodes."""
    src = read_source(0, storage.basename(path), fs, path)
    return [_episode_record(src, row) for row in range(min(n, len(src.episodes)))]


def preview_config(checked: Checked, n: int, edit: TasksEdit | None = None) -> list[dict[str, Any]]:
    """The first n output episodes of a checked config: where each comes from, its new indices and its tasks
    (after `modify_tasks`' `edit`)."""
    out: list[dict[str, Any]] = []
    for name, selected in checked.groups.items():
        frame = 0
        for i, (pos, row) in enumerate(zip(selected.source.tolist(), selected.row.tolist(), strict=True)):
            if len(out) == n:
                return out
            eps = checked.sources[pos].episodes
            length = int(eps.length[row])
            tasks = eps.task_sets[eps.tasks[row]]
            record = {"split": name} if name else {}
            out.append(
                record
                | {
                    "episode_index": i,
                    "index_from": frame,
                    "length": length,
                    "tasks": list(tasks) if edit is None else episode_tasks(edit, int(eps.index[row]), tasks),
                    "source": checked.sources[pos].name,
                    "source_episode": int(eps.index[row]),
                }
            )
            frame += length
    return out
