"""Encoding one output video file of `convert_image_to_video` or `reencode_videos`: the frames come from the
images of the data files (PNG or JPEG bytes) or from decoding runs of source videos, and are encoded with the
run's settings, one frame every 1/fps, so episode k of the file starts at the frames before it over the fps.

Depth maps (single-channel images) are quantized to 12 bits as LeRobot's depth encoder does (`depth_codes`),
and stored in a grey pixel format.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.errors import RunFailed
from raymerge.lerobot import ranged
from raymerge.lerobot.config import DepthOptions
from raymerge.lerobot.data import row_groups_with
from raymerge.lerobot.encode_plan import Encode, ImageJob
from raymerge.lerobot.layout import DataRun, VideoJob
from raymerge.lerobot.video.decode import frames_from
from raymerge.lerobot.video.encode import encode_frames
from raymerge.lerobot.video.io import open_input
from raymerge.lerobot.video.probe import frame_rate
from raymerge.lerobot.video.write import VideoResult

DEPTH_LEVELS = 4095  # 12-bit codes, as LeRobot quantizes depth
# Image codecs by the first bytes of an embedded image.
IMAGE_CODECS = {b"\x89PNG": "png", b"\xff\xd8\xff": "mjpeg"}


def depth_codes(values: np.ndarray, opts: DepthOptions) -> np.ndarray:
    """Depths (integers are millimetres, floats metres) as 12-bit codes over [depth_min, depth_max]: after
    log(d + shift) with `use_log` (finer steps near the camera), linearly otherwise."""
    d = values.astype(np.float64) / (1000.0 if np.issubdtype(values.dtype, np.integer) else 1.0)
    lo, hi, x = opts.depth_min, opts.depth_max, np.clip(d, opts.depth_min, opts.depth_max)
    if opts.use_log:
        lo, hi, x = np.log(lo + opts.shift), np.log(hi + opts.shift), np.log(x + opts.shift)
    return np.rint((x - lo) / (hi - lo) * DEPTH_LEVELS).astype(np.uint16)


def depth_values(codes: np.ndarray, opts: DepthOptions) -> np.ndarray:
    """Depths in metres back from 12-bit codes (the inverse of `depth_codes`, up to its rounding)."""
    x = codes.astype(np.float64) / DEPTH_LEVELS
    if opts.use_log:
        lo, hi = np.log(opts.depth_min + opts.shift), np.log(opts.depth_max + opts.shift)
        return np.exp(lo + x * (hi - lo)) - opts.shift
    return opts.depth_min + x * (opts.depth_max - opts.depth_min)


def _read_images(fs: AbstractFileSystem, run: DataRun, key: str, size: int | None) -> pa.Table:
    """The run's episodes' rows of the image column (with episode and frame index), in frame order: only that
    column, of the row groups that can hold them."""
    columns = [key, "episode_index", "frame_index"]
    with ranged.open_input(fs, run.path, size) as f:
        file = pq.ParquetFile(f, pre_buffer=True)
        groups = row_groups_with(file, int(run.src_episodes.min()), int(run.src_episodes.max()))
        table = file.read_row_groups(groups, columns=columns)
    table = table.filter(pc.is_in(table["episode_index"], pa.array(run.src_episodes, type=table["episode_index"].type)))
    return table.sort_by([("episode_index", "ascending"), ("frame_index", "ascending")])


def _image_frames(
    job: ImageJob, fs_of: dict[int, AbstractFileSystem], sizes: dict, enc: Encode
) -> Iterator[av.VideoFrame]:
    """The job's images as frames, episode after episode (each checked to have its length and the declared
    size); depth maps as 12-bit grey codes."""
    height, width, channels = job.shape
    for run in job.runs:
        where = storage.url(fs_of[run.source], run.path)
        table = _read_images(fs_of[run.source], run, job.key, sizes.get((run.source, run.path)))
        episodes = table["episode_index"].to_numpy()
        blobs = table[job.key].combine_chunks().field("bytes")
        for src_episode, length in zip(run.src_episodes.tolist(), run.lengths.tolist(), strict=True):
            rows = np.flatnonzero(episodes == src_episode)
            if len(rows) != length:
                raise RunFailed(f"{where}: episode {src_episode} has {len(rows)} {job.key} images, not {length}")
            for r in rows.tolist():
                blob = blobs[r].as_py()
                if blob is None:
                    raise RunFailed(f"{where}: episode {src_episode} row {r}: {job.key} has no embedded image bytes")
                codec = next((c for magic, c in IMAGE_CODECS.items() if blob.startswith(magic)), None)
                if codec is None:
                    raise RunFailed(
                        f"{where}: episode {src_episode}: {job.key} holds an image that is neither PNG nor JPEG"
                    )
                ctx = av.CodecContext.create(codec, "r")  # one per image: PNG decoders keep state between frames
                assert isinstance(ctx, av.VideoCodecContext)
                image = ctx.decode(av.Packet(blob))[0]
                if (image.height, image.width) != (height, width):
                    raise RunFailed(
                        f"{where}: episode {src_episode}: a {job.key} image is {image.height}x{image.width}, "
                        f"but info.json declares {height}x{width}"
                    )
                if channels == 1:
                    codes = depth_codes(image.to_ndarray(), enc.depth_options)
                    yield av.VideoFrame.from_ndarray(codes, format="gray12le")
                else:  # rebuilt from its pixels: the PNG decoder's frame carries a full colour range
                    yield av.VideoFrame.from_ndarray(image.to_ndarray(format="rgb24"), format="rgb24")


def _video_frames(
    job: VideoJob, lengths: np.ndarray, fps: int, fs_of: dict[int, AbstractFileSystem], sizes: dict
) -> Iterator[av.VideoFrame]:
    """The frames of the job's episodes decoded from its source runs: for each episode, the frame shown at
    each of its timestamps (as LeRobot reads them, the nearest within half a frame)."""
    for run in job.runs:
        with open_input(fs_of[run.source], run.path, sizes.get((run.source, run.path))) as container:
            stream = container.streams.video[0]
            tol = float(1 / frame_rate(stream)) / 2
            stamps = [
                run.start_s + offset + i / fps
                for episode, offset in zip(run.episodes, run.offsets.tolist(), strict=True)
                for i in range(int(lengths[episode]))
            ]
            frames = frames_from(container, stream, stamps[0] - tol) if stamps else iter(())
            for q in stamps:
                found = next((f for f in frames if f.time is not None and f.time > q - tol), None)
                if found is None or found.time is None or found.time >= q + tol:
                    where = storage.url(fs_of[run.source], run.path)
                    raise RunFailed(f"{where}: no frame within {tol:.6f}s of timestamp {q:.6f}")
                yield found


def write_encoded(
    job: VideoJob | ImageJob,
    enc: Encode,
    lengths: np.ndarray,
    fs_of: dict[int, AbstractFileSystem],
    out_fs: AbstractFileSystem,
    out_root: str,
    sizes: dict[tuple[int, str], int] | None = None,
) -> VideoResult:
    """Encode the job's file below `out_root` and place its episodes one after the other; `lengths` are the
    output episodes' frame counts."""
    known = sizes or {}
    if isinstance(job, ImageJob):
        episodes = np.array(job.episodes, dtype=np.int64)
        height, width, channels = job.shape
        settings = enc.depth if channels == 1 else enc.color
        frames: Iterator[av.VideoFrame] = _image_frames(job, fs_of, known, enc)
    else:
        episodes = np.array([e for run in job.runs for e in run.episodes], dtype=np.int64)
        settings = enc.color
        decoded = _video_frames(job, lengths, enc.fps, fs_of, known)
        first = next(decoded, None)  # the size of the source's frames: no second opening of the file to ask for it
        if first is None:
            raise RunFailed(f"{job.path}: its episodes have no frames to encode")
        height, width = first.height, first.width
        frames = itertools.chain([first], decoded)
    counts = lengths[episodes]
    path = storage.join(out_root, job.path)
    encode_frames(frames, enc.fps, width, height, out_fs, path, settings, enc.threads)
    starts = (np.cumsum(counts) - counts) / enc.fps
    placements = np.stack([starts, starts + counts / enc.fps], axis=1)
    return VideoResult(job.key, job.path, episodes, placements, copied=False, reencoded=episodes.tolist())
