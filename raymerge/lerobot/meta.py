"""LeRobot metadata in both on-disk versions: read a dataset's `meta/` into plain values, write it back.

v2.1: `info.json`, `episodes.jsonl`, `episodes_stats.jsonl`, `tasks.jsonl`, one parquet/mp4 per episode.
v3.0: `info.json`, `episodes/chunk-XXX/file-XXX.parquet` (one row per episode, with file positions, video
timestamps and `stats/<feature>/<stat>` columns), `tasks.parquet`, `stats.json`, many episodes per file.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
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


@dataclass(frozen=True)
class VideoSpan:
    """The part of a source mp4 that holds one episode; a v2.1 episode owns the whole file (end_s once probed)."""

    path: str
    start_s: float
    end_s: float | None
    whole_file: bool = False


@dataclass(frozen=True)
class SourceEpisode:
    source: int
    index: int
    length: int
    tasks: tuple[str, ...]
    data_path: str
    videos: dict[str, VideoSpan] = field(default_factory=dict)
    # the source's image/video stats as JSON: nested lists of floats would cost the driver kilobytes per episode
    visual_json: bytes = b"{}"

    def visual_stats(self) -> dict[str, dict[str, Any]]:
        return json.loads(self.visual_json)


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


def read_parquet(fs: AbstractFileSystem, path: str, columns: list[str] | None = None) -> pa.Table:
    try:
        with fs.open(path, "rb") as f:
            return pq.ParquetFile(f).read(columns=columns)
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
        tasks, episodes = _read_v21(position, fs, root, info)
    else:
        tasks, episodes = _read_v30(position, fs, root, info)
    return Source(position, name, fs, root, info, tasks, episodes)


def _visual_json(stats: dict[str, Any], features: dict[str, dict[str, Any]]) -> bytes:
    return json.dumps({k: v for k, v in stats.items() if features.get(k, {}).get("dtype") in VISUAL}).encode()


def _read_v21(position: int, fs: AbstractFileSystem, root: str, info: dict) -> tuple[list[str], list[SourceEpisode]]:
    features = info["features"]
    task_rows = read_jsonl(fs, storage.join(root, V21_TASKS))
    tasks = [r["task"] for r in sorted(task_rows, key=lambda r: r["task_index"])]
    stats_path = storage.join(root, V21_EPISODES_STATS)
    stats = {}
    if storage.exists(fs, stats_path):
        stats = {r["episode_index"]: r.get("stats", {}) for r in read_jsonl(fs, stats_path)}
    chunks_size = int(info.get("chunks_size", 1000))
    episodes = []
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
                visual_json=_visual_json(stats.get(ep, {}), features),
            )
        )
    return tasks, episodes


def _read_v30(position: int, fs: AbstractFileSystem, root: str, info: dict) -> tuple[list[str], list[SourceEpisode]]:
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
    table = pa.concat_tables([read_parquet(fs, p) for p in files], promote_options="default")
    # numeric stats are recomputed from the data: only the visual ones are carried
    visual = {k for k, f in features.items() if f.get("dtype") in VISUAL}
    table = table.select(
        [c for c in table.column_names if not c.startswith("stats/") or c[len("stats/") :].rsplit("/", 1)[0] in visual]
    )
    episodes = []
    keys = video_keys(features)
    paths: dict[str, str] = {}  # one string per file and task, shared by the episodes
    for row in (r for batch in table.to_batches(max_chunksize=1024) for r in batch.to_pylist()):
        stats: dict[str, dict[str, Any]] = {}
        for col, value in row.items():
            if col.startswith("stats/"):
                feat, stat = col[len("stats/") :].rsplit("/", 1)
                stats.setdefault(feat, {})[stat] = value
        fmt = {"chunk_index": row["data/chunk_index"], "file_index": row["data/file_index"]}
        data_rel = info["data_path"].format(**fmt)
        videos = {}
        for key in keys:
            vfmt = {"chunk_index": row[f"videos/{key}/chunk_index"], "file_index": row[f"videos/{key}/file_index"]}
            rel = info["video_path"].format(video_key=key, **vfmt)
            videos[key] = VideoSpan(
                paths.setdefault(rel, storage.join(root, rel)),
                float(row[f"videos/{key}/from_timestamp"]),
                float(row[f"videos/{key}/to_timestamp"]),
            )
        episodes.append(
            SourceEpisode(
                source=position,
                index=int(row["episode_index"]),
                length=int(row["length"]),
                tasks=tuple(paths.setdefault(t, t) for t in row.get("tasks") or ()),
                data_path=paths.setdefault(data_rel, storage.join(root, data_rel)),
                videos=videos,
                visual_json=_visual_json(stats, features),
            )
        )
    episodes.sort(key=lambda e: e.index)
    return tasks, episodes


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
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="snappy")
    _write_bytes(fs, path, buf.getvalue())


def tasks_table(tasks: list[str]) -> pa.Table:
    """`tasks.parquet` as LeRobot writes it with pandas: the task string is the (named) index."""
    import pandas as pd

    frame = pd.DataFrame({"task_index": list(range(len(tasks)))}, index=pd.Index(tasks, name="task"))
    return pa.Table.from_pandas(frame)


def flat_stats(stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{feature: {stat: v}} -> {"stats/feature/stat": v}, the v3.0 episodes columns."""
    return {f"stats/{feat}/{name}": value for feat, d in stats.items() for name, value in d.items()}
