"""LeRobot metadata in both on-disk versions: read a dataset's `meta/` into plain values, write it back.

v2.1: `info.json`, `episodes.jsonl`, `episodes_stats.jsonl`, `tasks.jsonl`, one parquet/mp4 per episode.
v3.0: `info.json`, `episodes/chunk-XXX/file-XXX.parquet` (one row per episode, with file positions, video
timestamps and `stats/<feature>/<stat>` columns), `tasks.parquet`, `stats.json`, many episodes per file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.errors import InvalidInput

V21, V30 = "v2.1", "v3.0"
VERSIONS = (V21, V30)
INFO = "meta/info.json"
STATS = "meta/stats.json"
V21_EPISODES, V21_EPISODES_STATS, V21_TASKS = "meta/episodes.jsonl", "meta/episodes_stats.jsonl", "meta/tasks.jsonl"
V30_EPISODES_DIR, V30_TASKS = "meta/episodes", "meta/tasks.parquet"
V21_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V21_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V30_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V30_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V30_EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
# Columns every frame has besides the dataset's own features.
INDEX_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
VISUAL = ("video", "image")
NO_VISUAL = pa.schema([("episode_index", pa.int64())])  # the stats table of no episodes


@dataclass
class Episodes:
    """A source's episodes as columns, in episode order (row r is also row r of the source's `visual` table):
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
        return self.files[self.video_file[key][row]]

    def data_path(self, row: int) -> str:
        return self.files[self.data_file[row]]

    def rows_of(self, indices: list[int]) -> np.ndarray:
        """Rows of the given episode indices (which must exist)."""
        return np.searchsorted(self.index, np.asarray(indices, dtype=np.int64))


class Interned:
    """Codes for repeated values (file paths, task lists): each stored once."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self._codes: dict[Any, int] = {}

    def code(self, value: Any) -> int:
        found = self._codes.get(value)
        if found is None:
            found = self._codes[value] = len(self.values)
            self.values.append(value)
        return found


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
    visual: pa.Table

    @property
    def version(self) -> str:
        return self.info["codebase_version"]

    @property
    def url(self) -> str:
        return storage.url(self.fs, self.root)

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        return self.info["features"]

    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.get("dtype") == "video"]


def video_keys(features: dict[str, dict[str, Any]]) -> list[str]:
    return [k for k, f in features.items() if f.get("dtype") == "video"]


def numeric_keys(features: dict[str, dict[str, Any]]) -> list[str]:
    """Features whose stats come from the parquet data (everything but images, videos and strings)."""
    return [k for k, f in features.items() if f.get("dtype") not in (*VISUAL, "string")]


# -- reading ------------------------------------------------------------------------------------


def read_json(fs: AbstractFileSystem, path: str) -> Any:
    try:
        with fs.open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise InvalidInput(f"{storage.url(fs, path)}: file is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInput(f"{storage.url(fs, path)}: not valid JSON: {e}") from None


def read_jsonl(fs: AbstractFileSystem, path: str) -> list[dict[str, Any]]:
    try:
        with fs.open(path, "rb") as f:
            lines = f.read().decode().splitlines()
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
    """A whole parquet file, or only the columns `wanted` accepts."""
    try:
        with fs.open(path, "rb") as f:
            file = pq.ParquetFile(f)
            columns = [c for c in file.schema_arrow.names if wanted(c)] if wanted else None
            return file.read(columns=columns)
    except FileNotFoundError:
        raise InvalidInput(f"{storage.url(fs, path)}: file is missing") from None
    except (pa.ArrowException, OSError) as e:
        raise InvalidInput(f"{storage.url(fs, path)}: not a readable parquet file: {e}") from None


def read_info(fs: AbstractFileSystem, root: str) -> dict[str, Any]:
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
    info = read_info(fs, root)
    if info["codebase_version"] == V21:
        tasks, episodes, visual = _read_v21(fs, root, info)
    else:
        tasks, episodes, visual = _read_v30(fs, root, info)
    return Source(position, name, fs, root, info, tasks, episodes, visual)


def is_visual_stat(column: str, features: dict[str, dict[str, Any]]) -> bool:
    """Whether a `stats/<feature>/<stat>` column holds an image or video feature's stats."""
    return is_stat_of(column, features) and features[stat_of(column)[0]].get("dtype") in VISUAL


def is_stat_of(column: str, features: set[str] | dict[str, Any]) -> bool:
    return column.startswith("stats/") and stat_of(column)[0] in features


def stat_of(column: str) -> tuple[str, str]:
    """`stats/<feature>/<stat>` -> (feature, stat); feature names may hold slashes, stat names do not."""
    feature, name = column[len("stats/") :].rsplit("/", 1)
    return feature, name


def flat_stats(stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{feature: {stat: v}} -> {"stats/feature/stat": v}, the v3.0 episodes columns."""
    return {f"stats/{feat}/{name}": value for feat, d in stats.items() for name, value in d.items()}


def _read_v21(fs: AbstractFileSystem, root: str, info: dict) -> tuple[list[str], Episodes, pa.Table]:
    features = info["features"]
    task_rows = read_jsonl(fs, storage.join(root, V21_TASKS))
    tasks = [r["task"] for r in sorted(task_rows, key=lambda r: r["task_index"])]
    stats_path = storage.join(root, V21_EPISODES_STATS)
    stats = {}
    if storage.exists(fs, stats_path):
        for r in read_jsonl(fs, stats_path):
            flat = flat_stats(r.get("stats", {}))
            stats[r["episode_index"]] = {k: v for k, v in flat.items() if is_visual_stat(k, features)}
    chunks_size = int(info.get("chunks_size", 1000))
    rows = sorted(read_jsonl(fs, storage.join(root, V21_EPISODES)), key=lambda r: r["episode_index"])
    keys = video_keys(features)
    files, task_sets = Interned(), Interned()
    index, data_file, videos, visual = [], [], {k: [] for k in keys}, []
    for row in rows:
        ep = int(row["episode_index"])
        fmt = {"episode_chunk": ep // chunks_size, "episode_index": ep}
        index.append(ep)
        data_file.append(files.code(storage.join(root, info["data_path"].format(**fmt))))
        for key in keys:
            videos[key].append(files.code(storage.join(root, info["video_path"].format(video_key=key, **fmt))))
        visual.append({"episode_index": ep} | stats.pop(ep, {}))
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
    return tasks, episodes, pa.Table.from_pylist(visual, schema=None if visual else NO_VISUAL)


def numbers(table: pa.Table, name: str, dtype: type[np.number], where: str) -> np.ndarray:
    """A numeric column as a numpy array, read from its Arrow buffer (pyarrow's to_numpy imports pandas, 0.2 s
    of a fresh process that a plan would wait for); nulls and values of another kind are refused by name."""
    try:
        arr = pc.cast(table[name], pa.from_numpy_dtype(dtype)).combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        kind = "integer" if np.issubdtype(dtype, np.integer) else "a number"
        raise InvalidInput(f"{where}: {name} is not {kind}: {e}") from None
    if arr.null_count:
        raise InvalidInput(f"{where}: {arr.null_count} row(s) have no {name}")
    if not len(arr):
        return np.zeros(0, dtype=dtype)
    size = np.dtype(dtype).itemsize
    return np.frombuffer(arr.buffers()[1], dtype=dtype, count=len(arr), offset=arr.offset * size)


def _read_v30(fs: AbstractFileSystem, root: str, info: dict) -> tuple[list[str], Episodes, pa.Table]:
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
    visual = pa.concat_tables([v for _, v in parts], promote_options="default")
    if (np.diff(columns["index"]) < 0).any():  # files or rows out of episode order
        order = np.argsort(columns["index"], kind="stable")
        columns = {name: values[order] for name, values in columns.items()}
        visual = visual.take(order)
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
    return tasks, episodes, visual


def _episodes_file(
    fs: AbstractFileSystem, path: str, where: str, root: str, info: dict, paths: Interned, task_sets: Interned
) -> tuple[dict[str, np.ndarray], pa.Table]:
    """One v3.0 episodes file as columns of codes and numbers, and its image/video stats (`episode_index` and
    `stats/...`, kept in Arrow). Numeric stats are recomputed from the data: they are not read."""
    features = info["features"]
    keys = video_keys(features)
    table = read_parquet(fs, path, lambda c: not c.startswith("stats/") or is_visual_stat(c, features))
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
    visual = table.select(["episode_index", *(c for c in table.column_names if c.startswith("stats/"))])
    return columns, visual


# -- writing ------------------------------------------------------------------------------------


def _write_bytes(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    fs.makedirs(storage.parent(path), exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)


def write_json(fs: AbstractFileSystem, path: str, value: Any) -> None:
    _write_bytes(fs, path, json.dumps(value, indent=4, ensure_ascii=False).encode())


def write_jsonl(fs: AbstractFileSystem, path: str, rows: Iterable[dict[str, Any]]) -> None:
    _write_bytes(fs, path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())


def write_parquet(fs: AbstractFileSystem, path: str, table: pa.Table) -> None:
    fs.makedirs(storage.parent(path), exist_ok=True)
    with fs.open(path, "wb") as f:  # straight to the file: no second copy of the encoded table in memory
        pq.write_table(table, f, compression="snappy")


def tasks_table(tasks: list[str]) -> pa.Table:
    """`tasks.parquet` as LeRobot writes it with pandas: the task string is the (named) index."""
    import pandas as pd

    frame = pd.DataFrame({"task_index": list(range(len(tasks)))}, index=pd.Index(tasks, name="task"))
    return pa.Table.from_pandas(frame)
