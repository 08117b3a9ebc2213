"""The packets of a segment of a source mp4, read once: which packets (from the sample table), the byte range
they occupy (planned on the reader, so that remote storage sends them in a few large ranged reads), and the
packets themselves in decode order, grouped into groups of pictures.

A file without a sample table `mp4` models is read by seeking and demuxing, as FFmpeg finds it.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np

from raymerge.errors import RunFailed
from raymerge.lerobot.video.io import VideoSource
from raymerge.lerobot.video.mp4 import Samples
from raymerge.lerobot.video.probe import frame_rate, time_base


@dataclass(frozen=True)
class Segment:
    """The part [start_s, end_s) of a source video file (a whole v2.1 episode file: 0..duration); `size`, from
    the listing, spares a request for it on object storage."""

    fs: Any
    path: str
    start_s: float
    end_s: float
    size: int | None = None


def packet_span(table: Samples, lo: Fraction, hi: Fraction, frame: Fraction) -> tuple[int, int]:
    """Samples [k, j) in decode order that show the frames of [lo, hi): from the last keyframe that shows
    before `lo + frame` (the first one if none does) to the first sample decoded at or after `hi`."""
    tb = Fraction(1, table.timescale)
    keys = np.flatnonzero(table.key)
    if not len(keys) or keys[0] != 0:
        return 0, 0
    early = keys[table.pts[keys] < math.ceil((lo + frame) / tb)]
    k = int(early[-1]) if len(early) else 0
    later = np.flatnonzero(table.dts[k:] >= math.ceil(hi / tb))
    return k, k + int(later[0]) if len(later) else len(table)


def byte_span(table: Samples, k: int, j: int) -> tuple[int, int]:
    """The bytes samples [k, j) occupy."""
    return int(table.pos[k:j].min()), int((table.pos[k:j] + table.size[k:j]).max())


class Sources:
    """The source files of one output, each opened once while consecutive segments read it."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._open: tuple[tuple[int, str], VideoSource, av.container.InputContainer] | None = None

    def open(self, segment: Segment) -> tuple[VideoSource, av.container.InputContainer]:
        """The segment's file and container, its packets' bytes planned before the container reads any."""
        key = (id(segment.fs), segment.path)
        if self._open is not None and self._open[0] == key:
            source, container = self._open[1], self._open[2]
            _plan(source, segment, frame_rate(container.streams.video[0]))
            return source, container
        self._stack.close()
        source = VideoSource(segment.fs, segment.path, segment.size)
        table = source.samples
        if table is not None:
            _plan(source, segment, Fraction(table.timescale, max(table.frame_ticks, 1)))
        container = self._stack.enter_context(source.open())
        self._open = (key, source, container)
        return source, container

    def close(self) -> None:
        self._stack.close()
        self._open = None


def _plan(source: VideoSource, segment: Segment, rate: Fraction) -> None:
    table = source.samples
    if table is None:
        return
    half = 1 / (2 * rate)
    k, j = packet_span(table, Fraction(segment.start_s) - half, Fraction(segment.end_s) - half, 1 / rate)
    if j > k:
        source.plan([byte_span(table, k, j)])


def range_packets(
    source: VideoSource, container: av.container.InputContainer, lo: Fraction, hi: Fraction, where: str
) -> Iterator[av.Packet]:
    """Packets in decode order from the keyframe that shows at or before `lo` until none can show before `hi`:
    exactly the sample table's span when there is one, found by seeking otherwise."""
    stream = container.streams.video[0]
    table = source.samples
    if table is not None:
        k, j = packet_span(table, lo, hi, 1 / frame_rate(stream))
        if j > k:
            container.seek(int(table.pts[k]), stream=stream)  # FFmpeg seeks mp4 keyframes by presentation time
            packets = (p for p in container.demux(stream) if p.size)
            first = next(packets, None)
            if first is not None and first.dts == table.dts[k] and first.is_keyframe:
                yield from _checked(itertools.chain([first], itertools.islice(packets, j - k - 1)), where)
                return
    yield from _seek_packets(container, lo, hi, where)


def timestamps(p: av.Packet, where: str) -> tuple[int, int]:
    """The packet's (pts, dts); refused when it lacks either, as packets without timestamps cannot be remuxed."""
    if p.pts is None or p.dts is None:
        raise RunFailed(f"{where}: video packets without timestamps cannot be remuxed")
    return p.pts, p.dts


def _checked(packets: Iterator[av.Packet], where: str) -> Iterator[av.Packet]:
    for p in packets:
        timestamps(p, where)
        yield p


def _seek_packets(
    container: av.container.InputContainer, lo: Fraction, hi: Fraction, where: str
) -> Iterator[av.Packet]:
    """`range_packets` without a sample table. Seeking finds keyframes by decode time; with B-frames that
    keyframe can show later than asked, so the seek goes further back until the first keyframe shows early
    enough."""
    stream = container.streams.video[0]
    tb = time_base(stream)
    frame = 1 / frame_rate(stream)
    back = Fraction(0)
    while True:
        target = lo - back
        container.seek(int(target / tb) if target > 0 else 0, stream=stream)
        packets = (p for p in container.demux(stream) if p.size)
        first = next(packets, None)
        if first is None:
            return
        if first.pts is None or first.dts is None:
            raise RunFailed(f"{where}: video packets without timestamps cannot be remuxed")
        if first.is_keyframe and (first.pts * tb < lo + frame or target <= 0):
            break
        if target <= 0:
            raise RunFailed(f"{where}: the video does not start with a keyframe")
        back = max(2 * back, Fraction(1))
    end = math.ceil(hi / tb)  # in ticks: t * tb >= hi exactly when t >= end
    for p in itertools.chain([first], packets):
        if timestamps(p, where)[1] >= end:  # decode order: every later packet shows at or after its dts
            return
        yield p


def gops(packets: Iterator[av.Packet]) -> Iterator[list[av.Packet]]:
    """Packets grouped from one keyframe to the next, in decode order."""
    gop: list[av.Packet] = []
    for p in packets:
        if p.is_keyframe and gop:
            yield gop
            gop = []
        gop.append(p)
    if gop:
        yield gop
