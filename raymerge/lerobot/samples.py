"""Small, real LeRobot datasets (v2.1 or v3.0) for tests, demos and benchmarks.

Frames are encoded to real mp4s with `video.encode`; v3.0 files are built the way LeRobot builds them,
by concatenating per-episode encodes (`video.remux.concat`), or, with `keyframe_aligned=False`, by encoding a
whole file at once so that episodes start between keyframes.
"""

from __future__ import annotations

import struct
import tempfile
import zlib
from typing import Any

import numpy as np
import pyarrow as pa
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from raymerge import storage
from raymerge.lerobot import formats
from raymerge.lerobot.output_meta import write_json, write_jsonl, write_parquet
from raymerge.lerobot.schema import data_schema, tasks_table
from raymerge.lerobot.stats.columns import flat_stats
from raymerge.lerobot.stats.per_episode import frame_stats
from raymerge.lerobot.stats.summary import MOMENTS, column_values, exact_stats

STATE_DIM = 6


def png(image: np.ndarray) -> bytes:
    """A minimal PNG (what LeRobot embeds for `image` features), without an imaging library: RGB for uint8
    (H, W, 3), 16-bit grey for uint16 (H, W) depth maps."""
    h, w = image.shape[:2]
    grey = image.dtype == np.uint16
    rows = image.astype(">u2") if grey else image
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(h))

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16 if grey else 8, 0 if grey else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def camera_keys(cameras: int) -> list[str]:
    """The video feature names of a sample dataset with `cameras` cameras."""
    return [f"observation.images.cam{c}" for c in range(cameras)]


def frames_of(seed: int, episode: int, camera: int, length: int, height: int, width: int, grain: int = 0) -> np.ndarray:
    """Distinct, smooth frames (a moving bar on a tinted gradient) that survive lossy coding recognisably;
    `grain` adds deterministic sensor-like noise of that amplitude, so files compress to realistic sizes."""
    y, x = np.meshgrid(
        np.linspace(0, 160, height, dtype=np.float32), np.linspace(0, 160, width, dtype=np.float32), indexing="ij"
    )
    out = np.empty((length, height, width, 3), dtype=np.uint8)
    rng = np.random.default_rng([seed, episode, camera])
    tint = np.array([(seed * 53 + camera * 90) % 256, (episode * 37) % 256, (seed * 11 + 70) % 256], np.float32)
    for i in range(length):
        img = np.stack([y + x * 0.2, x, (y + x) * 0.5], axis=-1) * 0.5 + tint * 0.4
        bar = (i * 5 + episode * 3) % width
        img[:, max(0, bar - 2) : bar + 2] = 250
        if grain:
            img += rng.integers(-grain, grain + 1, size=img.shape).astype(np.float32)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def image_keys(image_cameras: int, depth: bool) -> list[str]:
    """The image feature names (frames stored in the data files) of a sample dataset, besides `with_image`'s."""
    return [f"observation.images.img{c}" for c in range(image_cameras)] + (["observation.depth"] if depth else [])


def depth_of(seed: int, episode: int, length: int, height: int, width: int) -> np.ndarray:
    """Depth maps in millimetres (uint16): a tilted plane moving closer frame by frame."""
    y, x = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    base = 400 + 150 * ((seed + episode) % 5) + 20 * y + 7 * x
    return np.stack([base + 35 * i for i in range(length)]).astype(np.uint16)


def features(
    cameras: int,
    height: int,
    width: int,
    fps: int,
    with_image: bool,
    codec: str,
    image_cameras: int = 0,
    depth: bool = False,
) -> dict[str, Any]:
    """info.json features as LeRobot writes them: state and action vectors, cameras, the frame columns."""
    names = [f"joint{j}" for j in range(STATE_DIM)]
    out: dict[str, Any] = {
        "action": {"dtype": "float32", "shape": [STATE_DIM], "names": names},
        "observation.state": {"dtype": "float32", "shape": [STATE_DIM], "names": names},
    }
    for key in camera_keys(cameras):
        out[key] = {
            "dtype": "video",
            "shape": [height, width, 3],
            "names": ["height", "width", "channels"],
            "info": {
                "video.height": height,
                "video.width": width,
                "video.codec": codec,
                "video.pix_fmt": "yuv420p",
                "video.is_depth_map": False,
                "video.fps": fps,
                "video.channels": 3,
                "has_audio": False,
            },
        }
    if with_image:
        out["observation.images.top"] = {
            "dtype": "image",
            "shape": [height, width, 3],
            "names": ["height", "width", "channels"],
        }
    for key in image_keys(image_cameras, depth):
        channels = 1 if key == "observation.depth" else 3
        out[key] = {"dtype": "image", "shape": [height, width, channels], "names": ["height", "width", "channels"]}
    for key, dtype in (("timestamp", "float32"), *((k, "int64") for k in formats.INDEX_COLUMNS[1:])):
        out[key] = {"dtype": dtype, "shape": [1], "names": None}
    return out


def _episode_table(
    seed: int,
    episode: int,
    length: int,
    frame_from: int,
    task: int,
    fps: int,
    image: np.ndarray | None,
    images: dict[str, np.ndarray],
) -> pa.Table:
    rng = np.random.default_rng(seed * 1000 + episode)
    state = rng.normal(size=(length, STATE_DIM)).astype(np.float32)
    action = (state + rng.normal(scale=0.1, size=state.shape)).astype(np.float32)
    cols: dict[str, Any] = {
        "action": pa.array(list(action), pa.list_(pa.float32())),
        "observation.state": pa.array(list(state), pa.list_(pa.float32())),
    }
    if image is not None:
        blob = png(image)
        cols["observation.images.top"] = pa.array(
            [{"bytes": blob, "path": None}] * length, pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        )
    for key, frames in images.items():
        cols[key] = pa.array(
            [{"bytes": png(f), "path": None} for f in frames],
            pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        )
    cols |= {
        "timestamp": pa.array(np.arange(length, dtype=np.float32) / fps),
        "frame_index": pa.array(np.arange(length, dtype=np.int64)),
        "episode_index": pa.array(np.full(length, episode, dtype=np.int64)),
        "index": pa.array(np.arange(frame_from, frame_from + length, dtype=np.int64)),
        "task_index": pa.array(np.full(length, task, dtype=np.int64)),
    }
    return pa.table(cols)


def _stats(table: pa.Table, feats: dict[str, Any], frames: dict[str, np.ndarray], with_q: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in feats:
        if key in frames:
            s = frame_stats(frames[key])
            out[key] = s if with_q else {k: v for k, v in s.items() if k in MOMENTS}
        elif key in table.column_names and feats[key]["dtype"] not in formats.CAMERA_DTYPES:
            out[key] = exact_stats(column_values(table[key]), with_q)
    return out


def make(
    fs: AbstractFileSystem | None,
    root: str,
    *,
    version: str = formats.V30,
    lengths: tuple[int, ...] = (12, 9, 15, 10),
    tasks: tuple[str, ...] = ("pick the cube", "place the cube"),
    episode_tasks: tuple[int, ...] | None = None,
    cameras: int = 2,
    fps: int = 10,
    height: int = 32,
    width: int = 48,
    seed: int = 0,
    episodes_per_file: int = 2,
    keyframe_aligned: bool = True,
    with_image: bool = False,
    robot_type: str = "so100",
    codec: str | None = None,
    gop: int | None = None,
    grain: int = 0,
    image_cameras: int = 0,
    depth: bool = False,
) -> str:
    """Write a dataset at `root`; returns its path. v3.0 files hold `episodes_per_file` episodes each.
    `image_cameras` colour cameras (and a `depth` camera) store their frames as PNG in the data files."""
    from raymerge.lerobot.video import encode

    fs = fs or LocalFileSystem()
    encoder = encode.available_encoder(codec) if codec else encode.default_encoder()
    codec_name = "av1" if "av1" in str(encoder) else "hevc" if "265" in str(encoder) else "h264"
    feats = features(cameras, height, width, fps, with_image, codec_name, image_cameras, depth)
    keys = camera_keys(cameras)
    ep_tasks = episode_tasks or tuple(i % len(tasks) for i in range(len(lengths)))
    used = list(dict.fromkeys(tasks[t] for t in ep_tasks))  # task table in order of first use
    n = len(lengths)
    starts = np.r_[0, np.cumsum(lengths)].astype(int)
    tables = []
    episode_rows, stats_rows = [], []
    all_frames: dict[tuple[int, str], np.ndarray] = {}
    for ep in range(n):
        for c, key in enumerate(keys):
            all_frames[(ep, key)] = frames_of(seed, ep, c, lengths[ep], height, width, grain)
        image = frames_of(seed + 1, ep, 9, 1, height, width)[0] if with_image else None
        images = {
            k: frames_of(seed, ep, 20 + c, lengths[ep], height, width)
            for c, k in enumerate(image_keys(image_cameras, False))
        }
        all_frames |= {(ep, k): v for k, v in images.items()}
        if depth:
            images["observation.depth"] = depth_of(seed, ep, lengths[ep], height, width)
        task = used.index(tasks[ep_tasks[ep]])
        table = _episode_table(seed, ep, lengths[ep], int(starts[ep]), task, fps, image, images)
        tables.append(table.cast(data_schema(table.schema, feats, version)))
        frames = {k: all_frames[(ep, k)] for k in keys + image_keys(image_cameras, False)}
        episode_rows.append({"episode_index": ep, "tasks": [used[task]], "length": lengths[ep]})
        stats_rows.append(_stats(table, feats, frames, version == formats.V30))

    info: dict[str, Any] = {
        "codebase_version": version,
        "robot_type": robot_type,
        "total_episodes": n,
        "total_frames": int(starts[-1]),
        "total_tasks": len(used),
    }
    if version == formats.V21:
        for ep in range(n):
            rel = formats.V21_DATA_PATH.format(episode_chunk=0, episode_index=ep)
            write_parquet(fs, storage.join(root, rel), tables[ep])
            for key in keys:
                rel = formats.V21_VIDEO_PATH.format(episode_chunk=0, video_key=key, episode_index=ep)
                path = storage.join(root, rel)
                fs.makedirs(storage.parent(path), exist_ok=True)
                encode.encode(all_frames[(ep, key)], fps, fs, path, codec=encoder, gop=gop)
        write_jsonl(fs, storage.join(root, formats.V21_EPISODES), episode_rows)
        write_jsonl(
            fs,
            storage.join(root, formats.V21_EPISODES_STATS),
            [{"episode_index": i, "stats": s} for i, s in enumerate(stats_rows)],
        )
        write_jsonl(
            fs, storage.join(root, formats.V21_TASKS), [{"task_index": i, "task": t} for i, t in enumerate(used)]
        )
        info |= {"total_videos": n * cameras, "total_chunks": 1, "chunks_size": 1000}
        paths = {"data_path": formats.V21_DATA_PATH, "video_path": formats.V21_VIDEO_PATH if keys else None}
    else:
        rows = _write_v30_files(
            fs, root, tables, all_frames, keys, lengths, fps, episodes_per_file, keyframe_aligned, encoder, gop
        )
        for row, base, stats in zip(rows, episode_rows, stats_rows, strict=True):
            row |= base | {"dataset_from_index": int(starts[row["episode_index"]])}
            row["dataset_to_index"] = row["dataset_from_index"] + row["length"]
            row |= flat_stats(stats) | {"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
        write_parquet(
            fs,
            storage.join(root, formats.V30_EPISODES_PATH.format(chunk_index=0, file_index=0)),
            pa.Table.from_pylist(rows),
        )
        write_parquet(fs, storage.join(root, formats.V30_TASKS), tasks_table(used))
        info |= {"chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200}
        paths = {"data_path": formats.V30_DATA_PATH, "video_path": formats.V30_VIDEO_PATH if keys else None}
        write_json(
            fs,
            storage.join(root, formats.STATS),
            _pooled_stats(tables, feats, all_frames, keys + image_keys(image_cameras, False)),
        )
    info |= {"fps": fps, "splits": {"train": f"0:{n}"}, **paths, "features": feats}
    write_json(fs, storage.join(root, formats.INFO), info)
    return root


def _pooled_stats(
    tables: list[pa.Table], feats: dict[str, Any], frames: dict[tuple[int, str], np.ndarray], keys: list[str]
) -> dict[str, Any]:
    whole = pa.concat_tables(tables)
    every = {k: np.concatenate([v for (_, key), v in sorted(frames.items()) if key == k]) for k in keys}
    return _stats(whole, feats, every, True)


def _write_v30_files(
    fs: AbstractFileSystem,
    root: str,
    tables: list[pa.Table],
    frames: dict[tuple[int, str], np.ndarray],
    keys: list[str],
    lengths: tuple[int, ...],
    fps: int,
    per_file: int,
    keyframe_aligned: bool,
    encoder: str | None,
    gop: int | None,
) -> list[dict[str, Any]]:
    """Data and video files of `per_file` episodes each; the episodes' file positions and timestamps."""
    from raymerge.lerobot.video import encode, remux

    rows: list[dict[str, Any]] = [{"episode_index": ep} for ep in range(len(tables))]
    for file_index, first in enumerate(range(0, len(tables), per_file)):
        group = list(range(first, min(first + per_file, len(tables))))
        rel = formats.V30_DATA_PATH.format(chunk_index=0, file_index=file_index)
        write_parquet(fs, storage.join(root, rel), pa.concat_tables([tables[ep] for ep in group]))
        for ep in group:
            rows[ep] |= {"data/chunk_index": 0, "data/file_index": file_index}
        for key in keys:
            path = storage.join(
                root, formats.V30_VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=file_index)
            )
            fs.makedirs(storage.parent(path), exist_ok=True)
            if keyframe_aligned:
                with tempfile.TemporaryDirectory() as tmp:
                    local = LocalFileSystem()
                    parts = []
                    for ep in group:
                        part = f"{tmp}/{ep}.mp4"
                        encode.encode(frames[(ep, key)], fps, local, part, codec=encoder, gop=gop)
                        parts.append(remux.Segment(local, part, 0.0, lengths[ep] / fps))
                    placed = remux.concat(parts, fs, path)
                spans = [(p.from_timestamp, p.to_timestamp) for p in placed]
            else:
                encode.encode(
                    np.concatenate([frames[(ep, key)] for ep in group]), fps, fs, path, codec=encoder, gop=gop
                )
                offsets = np.r_[0, np.cumsum([lengths[ep] for ep in group])] / fps
                spans = [(float(offsets[i]), float(offsets[i + 1])) for i in range(len(group))]
            for ep, (start, end) in zip(group, spans, strict=True):
                rows[ep] |= {
                    f"videos/{key}/chunk_index": 0,
                    f"videos/{key}/file_index": file_index,
                    f"videos/{key}/from_timestamp": start,
                    f"videos/{key}/to_timestamp": end,
                }
    return rows


def demo(root: str) -> None:
    """The datasets the example configs read: `python -m raymerge.lerobot.samples demo-data`."""
    base = storage.join(root, "lerobot")
    make(None, storage.join(base, "pick_v30"), version=formats.V30, lengths=(20, 15, 25, 18), seed=1)
    make(
        None,
        storage.join(base, "place_v21"),
        version=formats.V21,
        lengths=(16, 22, 12),
        seed=2,
        tasks=("place the cube", "push"),
    )


if __name__ == "__main__":
    import sys

    demo(sys.argv[1] if len(sys.argv) > 1 else "demo-data")
