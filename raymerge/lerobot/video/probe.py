"""What a video stream is, from its headers and packet index (no frame decoded): codec, size, rate, true
length, codec headers, and, when asked, where its groups of pictures are.

Lengths and groups of pictures come from the mp4 sample table (`mp4`, read from the `moov` box alone); only a
file whose table is not modelled is demuxed for them. Besides the `moov` box, opening the file reads its
first packet (FFmpeg learns the pixel format from it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
from fsspec import AbstractFileSystem

from raymerge.errors import InvalidInput
from raymerge.lerobot.video import mp4
from raymerge.lerobot.video.io import VideoSource


@dataclass(frozen=True)
class StreamInfo:
    """The first video stream of an mp4, from its headers and packet index (no frame is decoded).

    `extradata` is the sha256 of the codec's global headers (SPS/PPS, AV1 sequence header): streams
    can only be concatenated into one file when it is equal.
    """

    codec: str
    pix_fmt: str
    width: int
    height: int
    fps: float
    frames: int
    duration_s: float
    extradata: str = ""
    gops: GopIndex | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class GopIndex:
    """Where a file's groups of pictures are, from packet headers: enough to tell which cuts re-encode.

    `groups` holds (keyframe pts, min pts, max pts) per group in decode order; `unsafe` the tick intervals
    (dts, pts] of packets decoded before they are shown: a cut ending there drops a frame a kept one needs.
    """

    time_base: Fraction
    rate: Fraction
    groups: np.ndarray
    unsafe: np.ndarray


def codec_name(stream: av.video.stream.VideoStream) -> str:
    """The format's name (`av1`), not the decoder's (`libdav1d`)."""
    return stream.codec_context.codec.canonical_name


def extradata_digest(stream: av.video.stream.VideoStream) -> str:
    """The sha256 of the codec's global headers: equal when two streams can share one mp4 track."""
    return hashlib.sha256(bytes(stream.codec_context.extradata or b"")).hexdigest()


def time_base(stream: av.video.stream.VideoStream) -> Fraction:
    """The stream's time base as an exact fraction (refused when the file has none)."""
    if stream.time_base is None:
        raise InvalidInput(f"{stream.container.name}: video stream has no time base")
    return Fraction(stream.time_base)


def frame_rate(stream: av.video.stream.VideoStream) -> Fraction:
    """The stream's frame rate as an exact fraction (refused when the file has none)."""
    # The nominal rate first: the average comes from the container's duration, which is short of the last
    # frame's end when a file mixes re-encoded groups (no B-frames) with copied ones (decode times ahead).
    rate = stream.guessed_rate or stream.base_rate or stream.average_rate
    if not rate:
        raise InvalidInput(f"{stream.container.name}: video stream has no frame rate")
    return Fraction(rate)


def probe(fs: AbstractFileSystem, path: str, *, index: bool = False, size: int | None = None) -> StreamInfo:
    """The stream's parameters and true length; with `index`, also its groups of pictures.

    Both come from the sample table when the file has one `mp4` models; otherwise the last two groups of
    pictures are demuxed for the length, and with `index` every packet (the whole file is read).
    """
    source = VideoSource(fs, path, size)
    with source.open() as container:
        stream = container.streams.video[0]
        rate = frame_rate(stream)
        gops, packets, last_pts = None, len(stream.index_entries), None
        table = source.samples
        if table is not None:
            packets, last_pts = len(table), int(table.pts.max())
            gops = gop_index(table, time_base(stream), rate) if index else None
        else:
            if not index:
                last_pts = _last_pts(container, stream)
            if index or last_pts is None:
                gops, packets = _gop_index(container, stream, rate)
                if gops is not None and len(gops.groups):
                    last_pts = int(gops.groups[:, 2].max())
        frames = packets if table is not None else stream.frames or packets
        if last_pts is not None:  # where the last frame really ends, from its packet
            duration = float(last_pts * time_base(stream) + 1 / rate)
        elif stream.duration:
            duration = float(stream.duration * time_base(stream))
        else:
            duration = float(frames / rate)
        return StreamInfo(
            codec=codec_name(stream),
            pix_fmt=stream.codec_context.pix_fmt or "",
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=float(rate),
            frames=int(frames),
            duration_s=duration,
            extradata=extradata_digest(stream),
            gops=gops,
        )


def gop_index(table: mp4.Samples, time_base: Fraction, rate: Fraction) -> GopIndex:
    """The groups of pictures of a sample table (what `_gop_index` finds by demuxing, without reading a frame)."""
    n = len(table)
    starts = np.flatnonzero(table.key | (np.arange(n) == 0))
    groups = np.stack(
        [table.pts[starts], np.minimum.reduceat(table.pts, starts), np.maximum.reduceat(table.pts, starts)], axis=1
    )
    unsafe: list[tuple[int, int]] = []
    late = np.flatnonzero(table.pts > table.dts)
    for dts, pts in zip(table.dts[late].tolist(), table.pts[late].tolist(), strict=True):
        if unsafe and dts <= unsafe[-1][1]:
            unsafe[-1] = (unsafe[-1][0], max(unsafe[-1][1], pts))
        else:
            unsafe.append((dts, pts))
    return GopIndex(time_base, rate, groups.astype(np.int64), np.array(unsafe, dtype=np.int64).reshape(-1, 2))


def _last_pts(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int | None:
    """The latest presentation time, demuxing from the second-to-last keyframe the file's index lists
    (B-frames can show a group's last frame after the next keyframe's); None without an index."""
    entries = stream.index_entries
    keys = []  # the last two keyframes, walking back from the end (an index can list a million frames)
    for i in range(len(entries) - 1, -1, -1):
        if entries[i].is_keyframe:
            keys.append(entries[i].timestamp)
            if len(keys) == 2:
                break
    if not keys:
        return None
    if len(keys) == 2:
        container.seek(keys[1], stream=stream)
    last = None
    for p in container.demux(stream):
        if p.size and p.pts is not None and (last is None or p.pts > last):
            last = p.pts
    if last is None:  # no timestamps: the caller demuxes from the start
        container.seek(0, stream=stream)
    return last


def _gop_index(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, rate: Fraction
) -> tuple[GopIndex | None, int]:
    """The file's groups of pictures and its packet count, demuxed without decoding (None without timestamps)."""
    groups: list[list[int]] = []
    unsafe: list[tuple[int, int]] = []
    count, timed = 0, True
    for p in container.demux(stream):
        if not p.size:
            continue
        count += 1
        if p.pts is None or p.dts is None:
            timed = False
            continue
        if p.is_keyframe or not groups:
            groups.append([p.pts, p.pts, p.pts])
        else:
            g = groups[-1]
            g[1], g[2] = min(g[1], p.pts), max(g[2], p.pts)
        if p.pts > p.dts:
            if unsafe and p.dts <= unsafe[-1][1]:
                unsafe[-1] = (unsafe[-1][0], max(unsafe[-1][1], p.pts))
            else:
                unsafe.append((p.dts, p.pts))
    if not timed:
        return None, count
    index = GopIndex(
        time_base(stream),
        rate,
        np.array(groups, dtype=np.int64).reshape(-1, 3),
        np.array(unsafe, dtype=np.int64).reshape(-1, 2),
    )
    return index, count


def incompatibilities(a: StreamInfo, b: StreamInfo, *, remux: bool = False) -> list[str]:
    """Why streams `a` and `b` cannot be in one dataset; with `remux`, also why not in one file."""
    problems = [
        f"{name} {getattr(a, name)} != {getattr(b, name)}"
        for name in ("codec", "pix_fmt", "width", "height", "fps")
        if getattr(a, name) != getattr(b, name)
    ]
    if remux and a.extradata != b.extradata:
        problems.append(f"codec parameters (extradata sha256) {a.extradata[:12]} != {b.extradata[:12]}")
    return problems
