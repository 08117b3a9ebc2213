"""A Dataset of robot frames written as a LeRobot v3.0 dataset: the LeRobot family's Ray Data block.

The only module of the family that imports Ray: a `raymerge run` never loads it. The sink is map-reduce, and
each step is the family's own code:

- map (Ray Data's write tasks): a task's frames are cut into pieces, the consecutive frames of one episode it
  received; each piece's camera frames are encoded with PyAV into a segment of its own (`video.encode`, so every
  segment starts on a keyframe) and its pixels counted per channel (exact, 256 values); its other columns go
  to the task's fragment parquet, their `episode_index` the piece's number in it.
- reduce (`finish`, on the driver, with the executor's tasks): episodes ordered by their identity, their
  pieces checked to cover frames 0..n-1; the layout cut as a merge cuts it (files up to the size caps); data
  files written by the merge's data tasks (`data.write_data_file`: re-indexed, exact per-episode stats and
  mergeable summaries); each video file remuxed from its segments without re-encoding (`video.remux`); and
  the metadata by `output_meta.write`, the camera stats being the exact ones counted in the map.

So a Dataset cut into blocks anywhere (an episode over several blocks, blocks in any order) gives the same
dataset, and a curated read of `ray.data.read_lerobot` (filter, map_batches) is written back in one pipeline.
Camera frames arriving already encoded (segments of the source mp4) are not passed through: frames are
decoded by the reader and encoded once here.

Longer than most modules (about 600 lines) for a reason: the map and the reduce share the `Piece` and
`Fragment` records and read best side by side; what they call is the family's own modules.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem
from pydantic import ValidationError
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink

from raymerge import storage
from raymerge.data import StagedOutput, ray_executor
from raymerge.errors import InvalidInput
from raymerge.executor import Executor
from raymerge.lerobot import formats, output_meta, tasks
from raymerge.lerobot.arrays import Interned, even_parts
from raymerge.lerobot.config import LeRobotOutput
from raymerge.lerobot.data import DataWriteContext
from raymerge.lerobot.layout import DataJob, DataRun, Layout, _chunk_file, _pack
from raymerge.lerobot.plan import Output
from raymerge.lerobot.results import TaskResults
from raymerge.lerobot.stats.summary import Summary
from raymerge.report import Report

__all__ = ["LeRobotDatasink"]

# Columns of `ray.data.read_lerobot` rows that the output recomputes (index, task_index) or that belong to
# the source (dataset_index identifies it, stats are its stats.json).
RECOMPUTED = ("index", "task_index", "dataset_index", "stats")
INDEX_TYPES = {
    "timestamp": pa.float32(),
    "frame_index": pa.int64(),
    "episode_index": pa.int64(),
    "index": pa.int64(),
    "task_index": pa.int64(),
}
TIMESTAMP_TOLERANCE_S = 1e-4  # LeRobot's tolerance_s for timestamps against frame_index / fps
PIXEL_VALUES = np.arange(256, dtype=np.float64) / 255.0


@dataclass
class Piece:
    """Consecutive frames of one episode received by one write task: its rows in the task's fragment (where
    `episode_index` is `number`), one encoded segment per camera, and the exact counts of its pixel values."""

    episode: tuple[int, ...]
    first: int  # frame_index of its first frame
    length: int
    number: int
    tasks: list[str]  # in order of first appearance
    segments: dict[str, tuple[str, int]]  # camera -> (path, bytes)
    shapes: dict[str, tuple[int, ...]]
    pixels: dict[str, np.ndarray]  # camera -> (3, 256) counts of each channel's values
    fragment: int = -1  # set by the driver: which fragment holds its rows


@dataclass
class Fragment:
    """What one write task made: its fragment parquet, the pieces in it, and the vector lengths it saw."""

    task: int
    path: str
    bytes: int
    rows: int
    tasks: list[str]
    pieces: list[Piece]
    schema: pa.Schema
    lengths: dict[str, int] = field(default_factory=dict)


class LeRobotDatasink(StagedOutput, Datasink):
    """Frames written as a LeRobot v3.0 dataset at `path` (local or s3://), committed atomically.

    A row is a frame: `episode_index`, `frame_index` (0..n-1 in each episode), `timestamp` (frame_index / fps,
    within 1e-4 s), `task` (its string), the features (numbers or fixed-length vectors), and each camera as a
    uint8 (height, width, 3) array; cameras are found by that type, or named with `cameras`. The columns
    `ray.data.read_lerobot` adds are handled: `index` and `task_index` are recomputed, `stats` dropped, and
    `dataset_index` (when present) tells apart episodes of several sources. Output episodes are ordered by
    (`dataset_index`, `episode_index`) and numbered from 0; tasks are numbered in order of first appearance.
    Videos are encoded with PyAV (`codec`: an encoder or codec name, default h264; `gop`: keyframe interval);
    stats are exact (per episode and for the dataset, quantiles included). `features` (an info.json features
    mapping) gives feature `names`; `data_files_size_in_mb`, `video_files_size_in_mb` and `chunks_size` are
    LeRobot's caps.

    Example:
        >>> import numpy as np, ray, tempfile, raymerge.data as rd
        >>> rows = [{"episode_index": e, "frame_index": i, "timestamp": i / 10, "task": "pick",
        ...          "observation.state": np.full(2, i, np.float32),
        ...          "observation.images.cam": np.full((16, 16, 3), 10 * i, np.uint8)}
        ...         for e in range(2) for i in range(5)]
        >>> out = tempfile.mkdtemp() + "/robot"
        >>> ray.data.from_items(rows).write_datasink(rd.LeRobotDatasink(out, fps=10))
        >>> import json; info = json.load(open(out + "/meta/info.json"))
        >>> info["total_episodes"], info["total_frames"], info["features"]["observation.images.cam"]["dtype"]
        (2, 10, 'video')
    """

    def __init__(
        self,
        path: str,
        *,
        fps: int,
        robot_type: str | None = None,
        features: dict[str, dict[str, Any]] | None = None,
        cameras: Sequence[str] | None = None,
        codec: str | None = None,
        gop: int | None = None,
        data_files_size_in_mb: float = 100,
        video_files_size_in_mb: float = 200,
        chunks_size: int = 1000,
        overwrite: bool = False,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        from raymerge.lerobot.video import encode

        try:
            self.options = LeRobotOutput(
                path=path,
                storage_options=storage_options or {},
                overwrite=overwrite,
                data_files_size_in_mb=data_files_size_in_mb,
                video_files_size_in_mb=video_files_size_in_mb,
                chunks_size=chunks_size,
            )
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            raise InvalidInput(f"LeRobotDatasink: {problems}") from None
        if not isinstance(fps, int) or fps <= 0:
            raise InvalidInput(f"LeRobotDatasink: fps must be a positive integer, got {fps!r}")
        self.encoder = encode.available_encoder(codec) if codec else encode.default_encoder()
        if self.encoder is None:
            raise InvalidInput(f"LeRobotDatasink: this PyAV build has no encoder for {codec!r}")
        self.fps, self.gop, self.robot_type = fps, gop, robot_type
        self.given_features = dict(features or {})
        self.cameras = list(cameras) if cameras is not None else None
        super().__init__(path, storage_options, overwrite=overwrite)

    # -- map: one write task ---------------------------------------------------------------------------
    def write(self, blocks: Iterable[Block], ctx: Any) -> Fragment | None:
        """This task's frames: camera segments encoded, other columns to one fragment file; its `Fragment`."""
        task = ctx.task_idx
        state = _TaskState()
        for block in blocks:
            table = BlockAccessor.for_block(block).to_arrow()
            if table.num_rows:
                self._add_block(table, task, state)
        if not state.tables:
            return None
        path = storage.join(self.scratch, "frames", f"{task:06d}.parquet")
        self.fs.makedirs(storage.parent(path), exist_ok=True)
        table = pa.concat_tables(state.tables, promote_options="permissive")
        with self.fs.open(path, "wb") as f:
            pq.write_table(table, f, row_group_size=4096)
        size = int(self.fs.size(path))
        return Fragment(task, path, size, table.num_rows, state.tasks.values, state.pieces, table.schema, state.lengths)

    def _add_block(self, table: pa.Table, task: int, state: _TaskState) -> None:
        for name in ("episode_index", "frame_index", "timestamp", "task"):
            if name not in table.column_names:
                raise InvalidInput(
                    f"LeRobotDatasink: the frames have no {name!r} column (columns: {', '.join(table.column_names)})"
                )
        cameras = self.cameras if self.cameras is not None else [c for c in table.column_names if _is_camera(table[c])]
        ident = [c for c in ("dataset_index", "episode_index") if c in table.column_names]
        keys = [_ints(table, c) for c in ident]
        frame = _ints(table, "frame_index")
        order = np.lexsort((frame, *reversed(keys)))
        keys, frame = [k[order] for k in keys], frame[order]
        same = np.logical_and.reduce([k[1:] == k[:-1] for k in keys]) if len(frame) > 1 else np.zeros(0, bool)
        if (same & (frame[1:] == frame[:-1])).any():
            i = int(np.flatnonzero(same & (frame[1:] == frame[:-1]))[0])
            raise InvalidInput(f"LeRobotDatasink: episode {_name(ident, keys, i)} has frame {frame[i]} twice")
        starts = np.flatnonzero(np.r_[True, ~same | (frame[1:] != frame[:-1] + 1)])
        ends = np.append(starts[1:], len(frame))
        ts = pc.cast(table["timestamp"], pa.float64()).to_numpy(zero_copy_only=False)[order]
        late = np.abs(ts - frame / self.fps) > TIMESTAMP_TOLERANCE_S
        if late.any():
            i = int(np.flatnonzero(late)[0])
            raise InvalidInput(
                f"LeRobotDatasink: episode {_name(ident, keys, i)} frame {frame[i]} has timestamp {ts[i]}, not "
                f"frame_index / fps = {frame[i] / self.fps} (frames must be evenly spaced at {self.fps} fps)"
            )
        rows = _frame_columns(table.take(pa.array(order)), cameras, state.lengths)
        task_names = pc.cast(table["task"], pa.string()).take(pa.array(order))
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            number = len(state.pieces)
            names = list(dict.fromkeys(task_names[a:b].to_pylist()))
            if None in names:
                raise InvalidInput(f"LeRobotDatasink: episode {_name(ident, keys, a)} has frames without a task")
            piece = Piece(tuple(int(k[a]) for k in keys), int(frame[a]), b - a, number, names, {}, {}, {})
            for cam in cameras:
                frames = _frames(table[cam].take(pa.array(order[a:b])), cam)
                path = storage.join(self.scratch, "videos", f"{task:06d}-{number:06d}-{len(piece.segments)}.mp4")
                piece.segments[cam] = (path, self._encode(frames, path))
                piece.shapes[cam] = tuple(frames.shape[1:])
                piece.pixels[cam] = _pixel_counts(frames)
            local = np.array([state.tasks.code(t) for t in task_names[a:b].to_pylist()], np.int64)
            part = rows.slice(a, b - a)
            part = _set(part, "episode_index", np.full(b - a, number, np.int64))
            state.tables.append(_set(part, "task_index", local))
            state.pieces.append(piece)

    def _encode(self, frames: np.ndarray, path: str) -> int:
        from raymerge.lerobot.video import encode

        if frames.shape[1] % 2 or frames.shape[2] % 2:
            raise InvalidInput(f"LeRobotDatasink: frames of {frames.shape[1:3]} pixels; yuv420p needs even sizes")
        self.fs.makedirs(storage.parent(path), exist_ok=True)
        encode.encode(frames, self.fps, self.fs, path, codec=self.encoder, gop=self.gop)
        return int(self.fs.size(path))

    # -- reduce: on the driver ----------------------------------------------------------------------------
    def finish(self, results: list[Any]) -> Report:
        """The layout from the fragments' pieces, then data and video files by tasks, then the metadata."""
        fragments = sorted((r for r in results if r is not None), key=lambda r: r.task)
        if not fragments:
            raise InvalidInput("LeRobotDatasink: the Dataset has no frames; a LeRobot dataset needs at least one")
        for i, frag in enumerate(fragments):
            for p in frag.pieces:
                p.fragment = i
        episodes = _episodes(fragments)
        schema, lengths = _schema(fragments)
        cameras = _cameras(episodes)
        features = self._features(schema, lengths, cameras)
        layout = self._layout(episodes, fragments, cameras)
        with ray_executor() as ex:
            done = self._write_files(ex, layout, episodes, fragments, schema, features)
        done.video_stats = {e: _camera_stats(ep) for e, ep in enumerate(episodes)}
        no_stored_stats = _CameraStats(0, pa.table({"episode_index": pa.array(np.arange(len(episodes)))}))
        info = {"robot_type": self.robot_type, "fps": self.fps, "features": features}
        written = output_meta.write(
            [no_stored_stats],  # type: ignore[list-item]
            Output("", layout, info, schema),
            done,
            self.fs,
            self.root,
            self.options,
            True,
        )
        report = Report("lerobot", "write", self.target_url, unit="frames", rows_out=layout.frames)
        report.files_written = sorted(done.files) + written
        report.details |= {"episodes": len(episodes), "tasks": len(layout.tasks), "cameras": len(cameras)}
        return report

    def _write_files(
        self,
        ex: Executor,
        layout: Layout,
        episodes: list[_Episode],
        fragments: list[Fragment],
        schema: pa.Schema,
        features: dict[str, dict[str, Any]],
    ) -> TaskResults:
        """Data files by the merge's data tasks (from the fragments), video files remuxed from the segments."""
        context = DataWriteContext(
            dict.fromkeys(range(len(fragments)), self.fs),
            layout.task_maps,
            schema,
            self.fs,
            self.root,
            {k: tuple(features[k]["shape"]) for k in formats.numeric_keys(features)},
            True,
            {(i, f.path): f.bytes for i, f in enumerate(fragments)},
        )
        shared = ex.put(context)
        handles, paths = [], []
        for n, jobs in enumerate(even_parts(layout.data_jobs, ex.parallelism())):
            paths.append(storage.join(self.scratch, "stats", f"episode-stats-{n:06d}.parquet"))
            handles.append(ex.submit(tasks.write_data_files, jobs, shared, paths[-1]))
        videos = [
            ex.submit(_write_video, self.fs, self.root, key, rel, segments, self.fps)
            for key, rel, segments in _video_jobs(layout, episodes, formats.video_keys(features))
        ]
        results = TaskResults()
        for n, value in enumerate(ex.get(handles)):
            results.add_data(n, value, paths[n])
        results.placements = {k: np.full((len(episodes), 2), np.nan) for k in formats.video_keys(features)}
        for key, rel, eps, placed in ex.get(videos):
            results.placements[key][eps] = placed
            results.files.append(rel)
        return results

    def _features(
        self, schema: pa.Schema, lengths: dict[str, int], cameras: dict[str, tuple[int, ...]]
    ) -> dict[str, dict[str, Any]]:
        """info.json features in column order, cameras as videos, the frame columns last."""
        out: dict[str, dict[str, Any]] = {}
        for f in schema:
            if f.name in INDEX_TYPES:
                continue
            shape = [lengths[f.name]] if pa.types.is_list(f.type) else [1]
            if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
                dtype = "string"
            else:
                dtype = np.dtype((f.type.value_type if pa.types.is_list(f.type) else f.type).to_pandas_dtype()).name
            out[f.name] = {"dtype": dtype, "shape": shape, "names": self.given_features.get(f.name, {}).get("names")}
        codec = "av1" if "av1" in str(self.encoder) else "hevc" if "265" in str(self.encoder) else "h264"
        for key, frame in cameras.items():
            out[key] = _camera_feature(frame, self.fps, codec)
        for key, t in INDEX_TYPES.items():
            out[key] = {"dtype": np.dtype(t.to_pandas_dtype()).name, "shape": [1], "names": None}
        return out

    def _layout(self, episodes: list[_Episode], fragments: list[Fragment], cameras: dict[str, Any]) -> Layout:
        """Where each episode goes: files packed up to the caps, as a merge packs them."""
        n = len(episodes)
        length = np.array([e.length for e in episodes], np.int64)
        frame_from = (np.cumsum(length) - length).astype(np.int64)
        tasks_seen = Interned()
        sets = Interned()
        for e in episodes:
            for t in e.tasks:
                tasks_seen.code(t)
        episode_tasks = np.array([sets.code(tuple(e.tasks)) for e in episodes], np.int32)
        task_maps = {i: [tasks_seen.code(t) for t in f.tasks] for i, f in enumerate(fragments)}
        size = np.array(
            [
                sum(fragments[p.fragment].bytes * p.length / max(fragments[p.fragment].rows, 1) for p in e.pieces)
                for e in episodes
            ]
        )
        options = self.options
        data_slots = _chunk_file(_pack(size, options.data_files_size_in_mb * 1024**2), options.chunks_size)
        video_slots = {
            k: _chunk_file(
                _pack(
                    np.array([sum(p.segments[k][1] for p in e.pieces) for e in episodes], np.float64),
                    options.video_files_size_in_mb * 1024**2,
                ),
                options.chunks_size,
            )
            for k in cameras
        }
        layout = Layout(
            formats.V30, np.zeros(n, np.int32), np.arange(n, dtype=np.int64), length, frame_from, episode_tasks,
            sets.values, data_slots.reshape(-1, 2), video_slots, tasks_seen.values, task_maps, [], [],
        )  # fmt: skip
        layout.data_jobs = _data_jobs(layout, episodes, fragments)
        return layout


@dataclass
class _TaskState:
    tables: list[pa.Table] = field(default_factory=list)
    pieces: list[Piece] = field(default_factory=list)
    tasks: Interned = field(default_factory=Interned)
    lengths: dict[str, int] = field(default_factory=dict)


@dataclass
class _Episode:
    """One output episode: its identity, its pieces in frame order, its length and tasks."""

    key: tuple[int, ...]
    pieces: list[Piece]
    length: int
    tasks: list[str]


@dataclass
class _CameraStats:
    """What `output_meta.write` reads of a source: no stored camera stats (the counted ones replace them)."""

    position: int
    camera_stats: pa.Table


def _name(ident: list[str], keys: list[np.ndarray], i: int) -> str:
    return (
        ", ".join(f"{c} {int(k[i])}" for c, k in zip(ident, keys, strict=True)) if len(ident) > 1 else str(keys[-1][i])
    )


def _ints(table: pa.Table, name: str) -> np.ndarray:
    col = table[name]
    if col.null_count:
        raise InvalidInput(f"LeRobotDatasink: {col.null_count} frame(s) have no {name}")
    try:
        return pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise InvalidInput(f"LeRobotDatasink: {name} holds {col.type}, not integers") from None


def _is_camera(col: pa.ChunkedArray) -> bool:
    """A uint8 tensor column of (height, width, 3) frames (Ray's tensor types, fixed or variable shape)."""
    t = col.type
    if not isinstance(t, pa.ExtensionType) or getattr(t, "value_type", None) != pa.uint8():
        return False
    ndim = getattr(t, "ndim", None)  # variable-shaped tensors say only their number of dimensions
    return ndim == 3 if ndim is not None else len(t.shape) == 3 and t.shape[-1] == 3


def _frames(col: pa.ChunkedArray, name: str) -> np.ndarray:
    """A piece's frames of one camera as (n, height, width, 3) uint8."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    values = arr.to_numpy(zero_copy_only=False)
    if values.dtype == object:
        values = np.stack(list(values))
    if values.dtype != np.uint8 or values.ndim != 4 or values.shape[-1] != 3:
        raise InvalidInput(
            f"LeRobotDatasink: camera {name!r} holds {values.dtype} {values.shape[1:]}, not uint8 (h, w, 3)"
        )
    return np.ascontiguousarray(values)


def _frame_columns(table: pa.Table, cameras: list[str], lengths: dict[str, int]) -> pa.Table:
    """The non-camera columns as the data files hold them: vectors as list<element>, frame columns typed, the
    recomputed ones present (filled later)."""
    columns: dict[str, pa.Array] = {}
    for name in table.column_names:
        if name in cameras or name in RECOMPUTED or name in INDEX_TYPES or name == "task":
            continue
        columns[name] = _vector(table[name], name, lengths)
    n = table.num_rows
    for name, t in INDEX_TYPES.items():
        columns[name] = (
            pc.cast(table[name], t)
            if name in ("timestamp", "frame_index", "episode_index")
            else pa.array(np.zeros(n, np.int64))
        )
    return pa.table(columns)


def _vector(col: pa.ChunkedArray, name: str, lengths: dict[str, int]) -> pa.Array:
    """A feature column: numbers as they are; vectors (tensor, fixed or variable list) as list<element>, of
    one length throughout."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if isinstance(arr.type, pa.ExtensionType):
        values = arr.to_numpy(zero_copy_only=False)
        values = np.stack(list(values)) if values.dtype == object else values
        if values.ndim != 2:
            raise InvalidInput(f"LeRobotDatasink: feature {name!r} has shape {values.shape[1:]}; vectors only")
        arr = pa.ListArray.from_arrays(
            pa.array(np.arange(0, values.size + 1, values.shape[1], dtype=np.int32)), pa.array(values.reshape(-1))
        )
    elif pa.types.is_fixed_size_list(arr.type) or pa.types.is_large_list(arr.type):
        arr = pc.cast(arr, pa.list_(arr.type.value_type))
    if not pa.types.is_list(arr.type):
        return arr
    found = pc.unique(pc.list_value_length(arr)).to_pylist()
    if len(found) != 1 or lengths.setdefault(name, found[0]) != found[0]:
        raise InvalidInput(
            f"LeRobotDatasink: feature {name!r} has vectors of lengths {sorted(set(found) | {lengths[name]})}"
        )
    return arr


def _set(table: pa.Table, name: str, values: np.ndarray) -> pa.Table:
    i = table.schema.get_field_index(name)
    return table.set_column(i, name, pa.array(values))


def _pixel_counts(frames: np.ndarray) -> np.ndarray:
    """How often each value occurs in each channel: (3, 256) integers, summed exactly whatever the pieces."""
    flat = frames.reshape(-1, 3)
    return np.stack([np.bincount(flat[:, c], minlength=256) for c in range(3)]).astype(np.int64)


def _pixel_stats(counts: np.ndarray, frames: int) -> dict[str, Any]:
    """Exact stats of the channels scaled to [0, 1] from their value counts, in LeRobot's layout: (3, 1, 1)
    values, count in frames."""
    n = int(counts[0].sum())
    mean = counts @ PIXEL_VALUES / n
    present = counts > 0
    summary = Summary(
        (3, 1, 1),
        n,
        mean,
        (counts * (PIXEL_VALUES[None, :] - mean[:, None]) ** 2).sum(axis=1),
        np.array([PIXEL_VALUES[p].min() for p in present]),
        np.array([PIXEL_VALUES[p].max() for p in present]),
        [PIXEL_VALUES[p] for p in present],
        [c[p] for c, p in zip(counts, present, strict=True)],
    )
    return summary.to_stats(with_quantiles=True) | {"count": [frames]}


def _episodes(fragments: list[Fragment]) -> list[_Episode]:
    """Output episodes in identity order, each from its pieces in frame order, which must cover 0..n-1."""
    by_key: dict[tuple[int, ...], list[Piece]] = {}
    for frag in fragments:
        for p in frag.pieces:
            by_key.setdefault(p.episode, []).append(p)
    out = []
    for key in sorted(by_key):
        pieces = sorted(by_key[key], key=lambda p: p.first)
        at = 0
        for p in pieces:
            if p.first != at:
                what = "twice" if p.first < at else "missing"
                frame = p.first if p.first < at else at
                raise InvalidInput(
                    f"LeRobotDatasink: episode {'/'.join(map(str, key))}: frame {frame} is {what}; an episode's "
                    "frame_index must run 0..n-1 (filter whole episodes, not frames inside one)"
                )
            at += p.length
        names = list(dict.fromkeys(t for p in pieces for t in p.tasks))
        out.append(_Episode(key, pieces, at, names))
    return out


def _schema(fragments: list[Fragment]) -> tuple[pa.Schema, dict[str, int]]:
    """The data files' schema: every fragment's must agree, as must vector lengths."""
    first = fragments[0]
    lengths = dict(first.lengths)
    for frag in fragments[1:]:
        if frag.schema != first.schema:
            raise InvalidInput(
                f"LeRobotDatasink: frames of different columns or types: {first.schema} vs {frag.schema}"
            )
        for k, v in frag.lengths.items():
            if lengths.setdefault(k, v) != v:
                raise InvalidInput(f"LeRobotDatasink: feature {k!r} has vectors of lengths {lengths[k]} and {v}")
    return first.schema, lengths


def _cameras(episodes: list[_Episode]) -> dict[str, tuple[int, ...]]:
    """Each camera's frame shape; every frame of every episode must have every camera, in one shape."""
    found: dict[str, tuple[int, ...]] = dict(episodes[0].pieces[0].shapes)
    for e in episodes:
        for p in e.pieces:
            if p.shapes != found:
                raise InvalidInput(
                    f"LeRobotDatasink: episode {'/'.join(map(str, e.key))} has cameras {p.shapes}, others {found}"
                )
    return found


def _camera_feature(shape: tuple[int, ...], fps: int, codec: str) -> dict[str, Any]:
    """A camera's info.json feature, as LeRobot describes a video it encoded."""
    h, w, c = shape
    stream = {"height": h, "width": w, "codec": codec, "pix_fmt": "yuv420p", "is_depth_map": False, "fps": fps}
    info = {f"video.{k}": v for k, v in stream.items()} | {"video.channels": c, "has_audio": False}
    return {"dtype": "video", "shape": [h, w, c], "names": ["height", "width", "channels"], "info": info}


def _data_jobs(layout: Layout, episodes: list[_Episode], fragments: list[Fragment]) -> list[DataJob]:
    """One job per data file; consecutive whole episodes of one fragment make one run (the file read once)."""
    jobs: dict[tuple[int, int], DataJob] = {}
    growing: DataRun | None = None  # the last run, while it holds only whole episodes
    for e, episode in enumerate(episodes):
        chunk, file = layout.data_slots[e].tolist()
        job = jobs.setdefault((chunk, file), DataJob(formats.data_path(formats.V30, (chunk, file)), []))
        whole = len(episode.pieces) == 1
        for p in episode.pieces:
            if whole and growing is not None and growing is job.runs[-1] and growing.source == p.fragment:
                growing.src_episodes = np.append(growing.src_episodes, p.number)
                growing.lengths = np.append(growing.lengths, p.length)
                continue
            frame_from = int(layout.frame_from[e]) + p.first
            run = DataRun(
                p.fragment, fragments[p.fragment].path, np.array([p.number]), np.array([p.length]), e, frame_from
            )
            job.runs.append(run)
            growing = run if whole else None
    return list(jobs.values())


def _video_jobs(
    layout: Layout, episodes: list[_Episode], cameras: Iterable[str]
) -> list[tuple[str, str, list[tuple[int, str, int, int]]]]:
    """Per camera and video file: (camera, path, [(episode, segment path, frames, bytes)] in order)."""
    out = []
    for key in cameras:
        files: dict[tuple[int, int], list[tuple[int, str, int, int]]] = {}
        for e, episode in enumerate(episodes):
            chunk, file = layout.video_slots[key][e].tolist()
            for p in episode.pieces:
                path, size = p.segments[key]
                files.setdefault((chunk, file), []).append((e, path, p.length, size))
        out += [(key, formats.video_path(formats.V30, key, slot), segs) for slot, segs in files.items()]
    return out


def _write_video(
    fs: AbstractFileSystem, root: str, key: str, rel: str, segments: list[tuple[int, str, int, int]], fps: int
) -> tuple[str, str, np.ndarray, np.ndarray]:
    """One video file remuxed from its segments (no re-encoding); each episode's (from, to) timestamps."""
    from raymerge.lerobot.video import remux

    path = storage.join(root, rel)
    fs.makedirs(storage.parent(path), exist_ok=True)
    placed = remux.concat([remux.Segment(fs, p, 0.0, n / fps, size) for _, p, n, size in segments], fs, path)
    episodes = np.array([e for e, *_ in segments])
    firsts = np.flatnonzero(np.r_[True, episodes[1:] != episodes[:-1]])
    lasts = np.append(firsts[1:], len(episodes)) - 1
    spans = np.array([[placed[a].from_timestamp, placed[b].to_timestamp] for a, b in zip(firsts, lasts, strict=True)])
    return key, rel, episodes[firsts], spans.reshape(-1, 2)


def _camera_stats(episode: _Episode) -> dict[str, dict[str, Any]]:
    """An episode's exact camera stats, from the value counts of all its pieces."""
    return {
        key: _pixel_stats(np.sum([p.pixels[key] for p in episode.pieces], axis=0), episode.length)
        for key in episode.pieces[0].pixels
    }
