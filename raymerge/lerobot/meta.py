"""LeRobot metadata in both on-disk versions: read a dataset's `meta/` into plain values, write it back.

v2.1: `info.json`, `episodes.jsonl`, `episodes_stats.jsonl`, `tasks.jsonl`, one parquet/mp4 per episode.
v3.0: `info.json`, `episodes/chunk-XXX/file-XXX.parquet` (one row per episode, with file positions, video
timestamps and `stats/<feature>/<stat>` columns), `tasks.parquet`, `stats.json`, many episodes per file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

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


@dataclass(frozen=True, slots=True)
class VideoSpan:
    """The part of a source mp4 that holds one episode; a v2.1 episode owns the whole file (end_s once probed)."""

    path: str
    start_s: float
    end_s: float | None
    whole_file: bool = False


@dataclass(frozen=True, slots=True)
class SourceEpisode:
    source: int
    index: int
    length: int
    tasks: tuple[str, ...]
    data_path: str
    videos: dict[str, VideoSpan] = field(default_factory=dict)
    row: int = 0  # the episode's row in its source's `visual` table


@dataclass
class Source:
    """One input dataset's metadata: what a plan needs, never payload."""

    position: int
    name: str
    fs: AbstractFileSystem
    root: str
    info: dict[str, Any]
    tasks: list[str]
    episodes: list[SourceEpisode]
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
        tasks, episodes, visual = _read_v21(position, fs, root, info)
    else:
        tasks, episodes, visual = _read_v30(position, fs, root, info)
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


def _read_v21(
    position: int, fs: AbstractFileSystem, root: str, info: dict
) -> tuple[list[str], list[SourceEpisode], pa.Table]:
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
    episodes, visual = [], []
    for row in sorted(read_jsonl(fs, storage.join(root, V21_EPISODES)), key=lambda r: r["episode_index"]):
        ep = int(row["episode_index"])
        fmt = {"episode_chunk": ep // chunks_size, "episode_index": ep}
        videos = {
            key: VideoSpan(storage.join(root, info["video_path"].format(video_key=key, **fmt)), 0.0, None, True)
            for key in video_keys(features)
        }
        episodes.append(
            SourceEpisode(
                source=position,
                index=ep,
                length=int(row["length"]),
                tasks=tuple(row.get("tasks", ())),
                data_path=storage.join(root, info["data_path"].format(**fmt)),
                videos=videos,
                row=len(visual),
            )
        )
        visual.append({"episode_index": ep} | stats.pop(ep, {}))
    return tasks, episodes, pa.Table.from_pylist(visual, schema=None if visual else NO_VISUAL)


def _read_v30(
    position: int, fs: AbstractFileSystem, root: str, info: dict
) -> tuple[list[str], list[SourceEpisode], pa.Table]:
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
    # numeric stats are recomputed from the data: they are not read, only the visual ones are carried
    table = pa.concat_tables(
        [read_parquet(fs, p, lambda c: not c.startswith("stats/") or is_visual_stat(c, features)) for p in files],
        promote_options="default",
    )
    table = table.take(pc.sort_indices(table["episode_index"]))
    visual = table.select(["episode_index", *(c for c in table.column_names if c.startswith("stats/"))])
    keys = video_keys(features)
    needed = ["episode_index", "length", "tasks", "data/chunk_index", "data/file_index"]
    needed += [f"videos/{k}/{c}" for k in keys for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise InvalidInput(f"{storage.url(fs, meta_dir)}: the episodes metadata has no column {missing[0]!r}")
    col = {c: table[c].to_pylist() for c in needed}  # column lists: no dict per episode
    episodes = []
    paths: dict[str, str] = {}  # one string per file and task, shared by the episodes
    for i, ep in enumerate(col["episode_index"]):
        data_rel = info["data_path"].format(
            chunk_index=col["data/chunk_index"][i], file_index=col["data/file_index"][i]
        )
        videos = {}
        for key in keys:
            rel = info["video_path"].format(
                video_key=key,
                chunk_index=col[f"videos/{key}/chunk_index"][i],
                file_index=col[f"videos/{key}/file_index"][i],
            )
            videos[key] = VideoSpan(
                paths.setdefault(rel, storage.join(root, rel)),
                float(col[f"videos/{key}/from_timestamp"][i]),
                float(col[f"videos/{key}/to_timestamp"][i]),
            )
        episodes.append(
            SourceEpisode(
                source=position,
                index=int(ep),
                length=int(col["length"][i]),
                tasks=tuple(paths.setdefault(t, t) for t in col["tasks"][i] or ()),
                data_path=paths.setdefault(data_rel, storage.join(root, data_rel)),
                videos=videos,
                row=i,
            )
        )
    return tasks, episodes, visual


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
