"""What raymerge reads of an input dataset's metadata (never its payload): `meta/info.json`, the episodes
(v2.1 `episodes.jsonl`, v3.0 `meta/episodes/*.parquet`), the tasks, and the stored image/video stats.

Episodes are kept as columns: a plan costs tens of bytes per episode, however many there are. Every file that
cannot be read is refused by name (`InvalidInput`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.errors import InvalidInput
from raymerge.lerobot.arrays import Interned, numbers
from raymerge.lerobot.formats import (
    INFO,
    V21,
    V21_EPISODES,
    V21_EPISODES_STATS,
    V21_TASKS,
    V30_EPISODES_DIR,
    V30_TASKS,
    VERSIONS,
    video_keys,
)
from raymerge.lerobot.stats.columns import NO_CAMERA_STATS, flat_stats, is_camera_stat


@dataclass
class Episodes:
    """A source's episodes as columns, in episode order (row r is also row r of the source's `camera_stats` table):
    what a plan needs of each episode in a few tens of bytes, however many there are."""

    index: np.ndarray  # (E,) int64 episode_index
    length: np.ndarray  # (E,) int64
    tasks: np.ndarray  # (E,) int32 into task_sets
    task_sets: list[tuple[str, ...]]
    data_file: np.ndarray  # (E,) int32 into files
    video_file: dict[str, np.ndarray]  # per camera (E,) int32 into files
    start_s: dict[str, np.ndarray]  # per camera (E,) float64: where the episode starts in its video file
    end_s: dict[str, np.ndarray]  # per camera (E,) float64; NaN until probed (a v2.1 episode owns its file)
    files: list[str]  # data and video paths
    whole_files: bool = False  # v2.1: each episode owns its video files

    def __len__(self) -> int:
        return len(self.index)

    def video_path(self, key: str, row: int) -> str:
        """The video file of camera `key` that holds episode row `row`."""
        return self.files[self.video_file[key][row]]

    def data_path(self, row: int) -> str:
        """The data file that holds episode row `row`."""
        return self.files[self.data_file[row]]

    def rows_of(self, indices: list[int]) -> np.ndarray:
        """Rows of the given episode indices (which must exist)."""
        return np.searchsorted(self.index, np.asarray(indices, dtype=np.int64))


@dataclass
class Source:
    """One input dataset's metadata: what a plan needs, never payload."""

    position: int
    name: str
    fs: AbstractFileSystem
    root: str
    info: dict[str, Any]
    tasks: list[str]
    episodes: Episodes
    # the episodes' stored image/video stats: `episode_index` and `stats/<feature>/<stat>` columns, kept in
    # Arrow (nested lists of floats as Python objects would cost the driver kilobytes per episode)
    camera_stats: pa.Table

    @property
    def version(self) -> str:
        """`v2.1` or `v3.0`."""
        return self.info["codebase_version"]

    @property
    def url(self) -> str:
        """Where the dataset is, as errors name it."""
        return storage.url(self.fs, self.root)

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        """info.json's features: dtype, shape, names (and video stream info)."""
        return self.info["features"]


def read_json(fs: AbstractFileSystem, path: str) -> Any:
    """A JSON file's value; a missing or malformed file is refused by name."""
    try:
        return json.loads(fs.cat_file(path))  # one request, not a HEAD and a GET
    except FileNotFoundError:
        raise InvalidInput(f"{storage.url(fs, path)}: file is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInput(f"{storage.url(fs, path)}: not valid JSON: {e}") from None


def read_jsonl(fs: AbstractFileSystem, path: str) -> list[dict[str, Any]]:
    """A JSON-lines file's rows (blank lines skipped); a bad line is refused with its number."""
    try:
        lines = fs.cat_file(path).decode().splitlines()
    except FileNotFoundError:
        raise InvalidInput(f"{storage.url(fs, path)}: file is missing") from None
    out = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise InvalidInput(f"{storage.url(fs, path)} line {n}: not valid JSON: {e}") from None
    return out


def read_parquet(fs: AbstractFileSystem, path: str, wanted: Callable[[str], bool] | None = None) -> pa.Table:
    """A whole parquet file, or only the columns `wanted` accepts (a metadata file: read in one request)."""
    try:
        file = pq.ParquetFile(pa.BufferReader(fs.cat_file(path)))
        columns = [c for c in file.schema_arrow.names if wanted(c)] if wanted else None
        return file.read(columns=columns)
    except FileNotFoundError:
        raise InvalidInput(f"{storage.url(fs, path)}: file is missing") from None
    except (pa.ArrowException, OSError) as e:
        raise InvalidInput(f"{storage.url(fs, path)}: not a readable parquet file: {e}") from None


def read_info(fs: AbstractFileSystem, root: str) -> dict[str, Any]:
    """`meta/info.json`, checked for a supported version and the keys every reader needs."""
    info = read_json(fs, storage.join(root, INFO))
    where = storage.url(fs, storage.join(root, INFO))
    version = info.get("codebase_version") if isinstance(info, dict) else None
    if version not in VERSIONS:
        raise InvalidInput(
            f"{where}: codebase_version {version!r} is not supported; expected one of {', '.join(VERSIONS)}"
        )
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise InvalidInput(f"{where}: required key {key!r} is missing")
    return info


def read_source(position: int, name: str, fs: AbstractFileSystem, root: str) -> Source:
    """Everything raymerge reads of an input's metadata, in either version."""
    info = read_info(fs, root)
    if info["codebase_version"] == V21:
        tasks, episodes, camera_stats = _read_v21(fs, root, info)
    else:
        tasks, episodes, camera_stats = _read_v30(fs, root, info)
    return Source(position, name, fs, root, info, tasks, episodes, camera_stats)


def _read_v21(fs: AbstractFileSystem, root: str, info: dict) -> tuple[list[str], Episodes, pa.Table]:
    """Tasks, episodes and camera stats of a v2.1 dataset: paths come from the info's templates."""
    features = info["features"]
    task_rows = read_jsonl(fs, storage.join(root, V21_TASKS))
    tasks = [r["task"] for r in sorted(task_rows, key=lambda r: r["task_index"])]
    stats_path = storage.join(root, V21_EPISODES_STATS)
    stats = {}
    if storage.exists(fs, stats_path):
        for r in read_jsonl(fs, stats_path):
            flat = flat_stats(r.get("stats", {}))
            stats[r["episode_index"]] = {k: v for k, v in flat.items() if is_camera_stat(k, features)}
    chunks_size = int(info.get("chunks_size", 1000))
    rows = sorted(read_jsonl(fs, storage.join(root, V21_EPISODES)), key=lambda r: r["episode_index"])
    keys = video_keys(features)
    files, task_sets = Interned(), Interned()
    index: list[int] = []
    data_file: list[int] = []
    videos: dict[str, list[int]] = {k: [] for k in keys}
    camera_stats: list[dict[str, Any]] = []
    for row in rows:
        ep = int(row["episode_index"])
        fmt = {"episode_chunk": ep // chunks_size, "episode_index": ep}
        index.append(ep)
        data_file.append(files.code(storage.join(root, info["data_path"].format(**fmt))))
        for key in keys:
            videos[key].append(files.code(storage.join(root, info["video_path"].format(video_key=key, **fmt))))
        camera_stats.append({"episode_index": ep} | stats.pop(ep, {}))
    n = len(rows)
    episodes = Episodes(
        index=np.array(index, dtype=np.int64),
        length=np.array([int(r["length"]) for r in rows], dtype=np.int64),
        tasks=np.array([task_sets.code(tuple(r.get("tasks", ()))) for r in rows], dtype=np.int32),
        task_sets=task_sets.values,
        data_file=np.array(data_file, dtype=np.int32),
        video_file={k: np.array(v, dtype=np.int32) for k, v in videos.items()},
        start_s={k: np.zeros(n) for k in keys},
        end_s={k: np.full(n, np.nan) for k in keys},
        files=files.values,
        whole_files=True,
    )
    return tasks, episodes, pa.Table.from_pylist(camera_stats, schema=None if camera_stats else NO_CAMERA_STATS)


def _read_v30(fs: AbstractFileSystem, root: str, info: dict) -> tuple[list[str], Episodes, pa.Table]:
    """Tasks, episodes and camera stats of a v3.0 dataset, its episodes files read one at a time."""
    features = info["features"]
    tasks_table = read_parquet(fs, storage.join(root, V30_TASKS))
    task_col = "task" if "task" in tasks_table.column_names else "__index_level_0__"
    if task_col not in tasks_table.column_names or "task_index" not in tasks_table.column_names:
        raise InvalidInput(f"{storage.url(fs, storage.join(root, V30_TASKS))}: expected columns task and task_index")
    pairs = sorted(zip(tasks_table["task_index"].to_pylist(), tasks_table[task_col].to_pylist(), strict=True))
    tasks = [t for _, t in pairs]
    meta_dir = storage.join(root, V30_EPISODES_DIR)
    files = sorted(p for p in fs.find(meta_dir) if p.endswith(".parquet")) if storage.exists(fs, meta_dir) else []
    if not files:
        raise InvalidInput(f"{storage.url(fs, meta_dir)}: no episode metadata files")
    paths, task_sets = Interned(), Interned()
    parts = [_episodes_file(fs, p, storage.url(fs, meta_dir), root, info, paths, task_sets) for p in files]
    columns = {name: np.concatenate([c[name] for c, _ in parts]) for name in parts[0][0]}
    camera_stats = pa.concat_tables([v for _, v in parts], promote_options="default")
    if (np.diff(columns["index"]) < 0).any():  # files or rows out of episode order
        order = np.argsort(columns["index"], kind="stable")
        columns = {name: values[order] for name, values in columns.items()}
        camera_stats = camera_stats.take(order)
    keys = video_keys(features)
    episodes = Episodes(
        index=columns["index"],
        length=columns["length"],
        tasks=columns["tasks"],
        task_sets=task_sets.values,
        data_file=columns["data_file"],
        video_file={k: columns[f"video_file/{k}"] for k in keys},
        start_s={k: columns[f"start_s/{k}"] for k in keys},
        end_s={k: columns[f"end_s/{k}"] for k in keys},
        files=paths.values,
    )
    return tasks, episodes, camera_stats


def _episodes_file(
    fs: AbstractFileSystem, path: str, where: str, root: str, info: dict, paths: Interned, task_sets: Interned
) -> tuple[dict[str, np.ndarray], pa.Table]:
    """One v3.0 episodes file as columns of codes and numbers, and its image/video stats (`episode_index` and
    `stats/...`, kept in Arrow). Numeric stats are recomputed from the data: they are not read."""
    features = info["features"]
    keys = video_keys(features)
    table = read_parquet(fs, path, lambda c: not c.startswith("stats/") or is_camera_stat(c, features))
    needed = ["episode_index", "length", "tasks", "data/chunk_index", "data/file_index"]
    needed += [f"videos/{k}/{c}" for k in keys for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise InvalidInput(f"{where}: the episodes metadata has no column {missing[0]!r}")

    def ints(name: str) -> np.ndarray:
        return numbers(table, name, np.int64, where)

    def file_codes(template: str, prefix: str, **fmt: str) -> np.ndarray:
        """One code per episode for the file its (chunk, file) columns name, each path formatted once."""
        pairs = np.stack([ints(f"{prefix}chunk_index"), ints(f"{prefix}file_index")], axis=1)
        found, inverse = np.unique(pairs, axis=0, return_inverse=True)
        codes = [
            paths.code(storage.join(root, template.format(chunk_index=int(c), file_index=int(f), **fmt)))
            for c, f in found
        ]
        return np.asarray(codes, dtype=np.int32)[inverse.reshape(-1)]

    task_codes = [
        task_sets.code(tuple(t or ()))
        for a in range(0, table.num_rows, 4096)  # Python lists a block at a time
        for t in table["tasks"].slice(a, 4096).to_pylist()
    ]
    columns = {
        "index": ints("episode_index"),
        "length": ints("length"),
        "tasks": np.array(task_codes, dtype=np.int32),
        "data_file": file_codes(info["data_path"], "data/"),
    }
    for k in keys:
        columns[f"video_file/{k}"] = file_codes(info["video_path"], f"videos/{k}/", video_key=k)
        columns[f"start_s/{k}"] = numbers(table, f"videos/{k}/from_timestamp", np.float64, where)
        columns[f"end_s/{k}"] = numbers(table, f"videos/{k}/to_timestamp", np.float64, where)
    camera_stats = table.select(["episode_index", *(c for c in table.column_names if c.startswith("stats/"))])
    return columns, camera_stats
