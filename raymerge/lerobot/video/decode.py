"""mp4 to frames: the frames shown at given timestamps (as LeRobot reads them), and the frames of a range of
packets (what a cut group of pictures is re-encoded from)."""

from __future__ import annotations

import itertools
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from fractions import Fraction

import av
import numpy as np
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.errors import InvalidInput
from raymerge.lerobot.video.io import open_input
from raymerge.lerobot.video.probe import frame_rate, time_base

# Query timestamps further apart than this are served by a fresh seek instead of decoding the gap.
SEEK_GAP_S = 2.0


def frames_from(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, t: float
) -> Iterator[av.VideoFrame]:
    """Frames in display order, starting at or before time `t` (seeks back further when the
    keyframe found by dts shows later than `t`, as B-frame streams can)."""
    back = 0.0
    while True:
        target = t - back
        container.seek(max(int(target / time_base(stream)), 0) if target > 0 else 0, stream=stream)
        frames = container.decode(stream)
        first = next(frames, None)
        if first is None:
            return
        if first.time <= t or target <= 0:
            yield first
            yield from frames
            return
        back = max(2 * back, 1.0)


def _clusters(queries: list[float]) -> list[list[float]]:
    """Sorted timestamps grouped where they are close enough to decode through rather than seek."""
    groups: list[list[float]] = []
    for q in queries:
        if groups and q - groups[-1][-1] <= SEEK_GAP_S:
            groups[-1].append(q)
        else:
            groups.append([q])
    return groups


def decode_at(
    fs: AbstractFileSystem, path: str, timestamps: list[float], *, tolerance_s: float | None = None
) -> np.ndarray:
    """The frames shown at `timestamps`, uint8 (N, H, W, 3).

    Like LeRobot's `decode_video_frames`: each timestamp takes the nearest frame, and a timestamp with no
    frame closer than the tolerance (default half a frame) is an error.
    """
    with open_input(fs, path) as container:
        stream = container.streams.video[0]
        tol = tolerance_s if tolerance_s is not None else float(1 / frame_rate(stream)) / 2
        queries = sorted(set(timestamps))
        best: dict[float, tuple[float, float, np.ndarray]] = {}
        for group in _clusters(queries):
            for frame in frames_from(container, stream, group[0] - tol):
                t = frame.time
                if t is None:
                    continue
                if t > group[-1] + tol:
                    break
                near = group[bisect_left(group, t - tol) : bisect_right(group, t + tol)]
                image = None
                for q in near:
                    dist = abs(t - q)
                    if dist < tol and (q not in best or dist < best[q][0]):
                        image = frame.to_ndarray(format="rgb24") if image is None else image
                        best[q] = (dist, t, image)
        missing = [q for q in queries if q not in best]
        if missing:
            raise InvalidInput(
                f"{storage.url(fs, path)}: no frame within {tol:.6f}s of timestamp {missing[0]:.6f}"
                f" ({len(missing)} of {len(queries)} timestamps have none)"
            )
        return np.stack([best[q][2] for q in timestamps])


def frames_between(
    stream: av.video.stream.VideoStream,
    packets: Iterator[av.Packet],
    lo: Fraction,
    hi: Fraction,
    shown: set[int] | None = None,
) -> Iterator[av.VideoFrame]:
    """Frames shown in [lo, hi), decoded from `packets` (which start on a keyframe), in display order; with
    `shown`, only the frames at those presentation times (the others only serve as references)."""
    ctx = stream.codec_context
    ctx.flush_buffers()
    tb = time_base(stream)
    for p in itertools.chain(packets, [None]):
        for f in ctx.decode(p):
            if f.pts is not None and lo <= f.pts * tb < hi and (shown is None or f.pts in shown):
                yield f
