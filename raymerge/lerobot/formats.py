"""The LeRobot on-disk formats, as facts every other module shares: versions, file paths, frame columns and
which features are pictures.

v2.1: `meta/info.json`, `episodes.jsonl`, `episodes_stats.jsonl`, `tasks.jsonl`, one parquet/mp4 per episode.
v3.0: `meta/info.json`, `episodes/chunk-XXX/file-XXX.parquet` (one row per episode, with file positions, video
timestamps and `stats/<feature>/<stat>` columns), `tasks.parquet`, `stats.json`, many episodes per file.
"""

from __future__ import annotations

from typing import Any

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
# Feature dtypes whose values are pictures: not in the stats of the parquet data, stored per channel.
CAMERA_DTYPES = ("video", "image")


def video_keys(features: dict[str, dict[str, Any]]) -> list[str]:
    """The cameras stored as mp4 files."""
    return [k for k, f in features.items() if f.get("dtype") == "video"]


def numeric_keys(features: dict[str, dict[str, Any]]) -> list[str]:
    """Features whose stats come from the parquet data (everything but images, videos and strings)."""
    return [k for k, f in features.items() if f.get("dtype") not in (*CAMERA_DTYPES, "string")]


def data_path(version: str, slot: tuple[int, int]) -> str:
    """An output data file's path from its slot: (chunk, episode) for v2.1, (chunk, file) for v3.0."""
    if version == V21:
        return V21_DATA_PATH.format(episode_chunk=slot[0], episode_index=slot[1])
    return V30_DATA_PATH.format(chunk_index=slot[0], file_index=slot[1])


def video_path(version: str, key: str, slot: tuple[int, int]) -> str:
    """An output video file's path from its camera and slot (as `data_path`)."""
    if version == V21:
        return V21_VIDEO_PATH.format(episode_chunk=slot[0], video_key=key, episode_index=slot[1])
    return V30_VIDEO_PATH.format(video_key=key, chunk_index=slot[0], file_index=slot[1])
