"""Concatenate segments of mp4 files into one by copying packets and rebasing their timestamps.

The frames of the output are bit-identical to the sources' (no decode, no re-encode); only a group of pictures
that a segment boundary cuts is re-encoded, alone. Every from/to timestamp returned is measured from the file
that was written, so that reading frame `i` of a segment at `from_timestamp + i / fps` returns that frame,
whatever the number of source files.
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.errors import InvalidInput, RunFailed
from raymerge.lerobot.video.decode import frames_between
from raymerge.lerobot.video.encode import available_encoder, matching_x264_options, reencode
from raymerge.lerobot.video.io import local_output, open_input
from raymerge.lerobot.video.probe import codec_name, extradata_digest, frame_rate

# Frames H.264 can hold back for reordering: decode times a run may borrow from the previous run's gap.
MAX_REORDER = 16


@dataclass(frozen=True)
class Segment:
    """The part [start_s, end_s) of a source video file (a whole v2.1 episode file: 0..duration)."""

    fs: Any
    path: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Placed:
    """Where a segment landed in the output file, measured from the written stream."""

    from_timestamp: float
    to_timestamp: float
    reencoded: bool


def _range_packets(
    container: av.container.InputContainer, lo: Fraction, hi: Fraction, where: str
) -> Iterator[av.Packet]:
    """Packets in decode order from the keyframe that shows at or before `lo` until none can show before `hi`.

    Seeking finds keyframes by decode time; with B-frames that keyframe can show later than asked, so the
    seek goes further back until the first keyframe shows early enough.
    """
    stream = container.streams.video[0]
    tb = Fraction(stream.time_base)
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
        if p.pts is None or p.dts is None:
            raise RunFailed(f"{where}: video packets without timestamps cannot be remuxed")
        if p.dts >= end:  # decode order: every later packet shows at or after its dts
            return
        yield p


def _gops(packets: Iterator[av.Packet]) -> Iterator[list[av.Packet]]:
    """Packets grouped from one keyframe to the next, in decode order."""
    gop: list[av.Packet] = []
    for p in packets:
        if p.is_keyframe and gop:
            yield gop
            gop = []
        gop.append(p)
    if gop:
        yield gop


def _signature(stream: av.video.stream.VideoStream) -> dict[str, Any]:
    """What must be equal for packets of two streams to share one mp4 track."""
    ctx = stream.codec_context
    return {
        "codec": codec_name(stream),
        "pix_fmt": ctx.pix_fmt,
        "width": ctx.width,
        "height": ctx.height,
        "extradata sha256": extradata_digest(stream)[:12],
    }


Ticks = int | Fraction


def _ticks(x: Fraction) -> Ticks:
    """`x` as an int when it is whole, so that arithmetic on it stays integer."""
    return x.numerator if x.denominator == 1 else x


class _ReencodedMismatch(RunFailed):
    """A re-encoded part's codec parameters differ from the copied ones: the file must be re-encoded whole."""


class _Track:
    """The output track: runs of copied packets and re-encoded parts, each placed where the written part ends.

    Presentation times are rebased in exact fractions of a second, so every run shows right after the
    previous one. Decode times only order the packets: a run whose decode times would fall at or before the
    last written one (a longer B-frame delay than what precedes it, e.g. a copied group after a re-encoded
    head) has its first decode times raised by one tick each, which stays below their presentation times
    as long as a frame spans more ticks than H.264 can reorder frames (only a coarser time base falls
    back to starting the run after a gap).
    """

    def __init__(self, out: av.container.OutputContainer, scratch: str) -> None:
        self.out, self.scratch = out, scratch
        self.stream: av.video.stream.VideoStream | None = None
        self.first: tuple[dict[str, Any], str, bool] | None = None
        self.time_base = Fraction(1)
        # In ticks of the output time base: plain ints whenever the source's ticks map onto whole output
        # ticks (the usual case), so the per-packet arithmetic below stays integer.
        self.end: Ticks = 0
        self.last_dts: int | None = None
        self.written = array("q")  # every muxed packet's dts, checked against the file's index at the end
        self.shown: tuple[int, int] | None = None  # the current piece's first and end presentation tick
        self.scale: Ticks = 1
        self.offset: Ticks = 0
        self.frame: Ticks = 0
        self.where = ""
        self.options: dict[str, dict[str, str]] = {}

    def _options(self, segment: Segment, source: av.video.stream.VideoStream) -> dict[str, str]:
        """Encoder settings matching the source's headers, found once per source file."""
        where = storage.url(segment.fs, segment.path)
        if where not in self.options:
            matched = codec_name(source) == "h264" and available_encoder("h264") == "libx264"
            self.options[where] = matching_x264_options(segment.fs, segment.path, source) if matched else {}
        return self.options[where]

    def _accept(self, stream: av.video.stream.VideoStream, where: str, reencoded: bool) -> None:
        signature = _signature(stream)
        if self.first is None:
            self.stream = self.out.add_stream_from_template(stream, opaque=True)  # remux: never opened to encode
            self.time_base = Fraction(stream.time_base)
            self.first = (signature, where, reencoded)
            return
        first, first_where, first_reencoded = self.first
        different = [name for name in first if first[name] != signature[name]]
        if not different:
            return
        problems = ", ".join(f"{name} {first[name]} != {signature[name]}" for name in different)
        message = f"{first_where} and {where} cannot be concatenated without re-encoding: {problems}"
        if different == ["extradata sha256"] and (first_reencoded or reencoded):
            raise _ReencodedMismatch(f"{message} (a re-encoded part's encoder settings differ from the source's)")
        raise InvalidInput(message)

    def begin(self, stream: av.video.stream.VideoStream, head: av.Packet, where: str, reencoded: bool) -> None:
        """Start a run of `stream`'s packets whose first frame shows at `head`'s pts."""
        self._accept(stream, where, reencoded)
        self.where = where
        self.scale = _ticks(Fraction(stream.time_base) / self.time_base)
        self.frame = _ticks(1 / (frame_rate(stream) * self.time_base))
        self.offset = _ticks(self.end - head.pts * self.scale)
        first_dts = round(head.dts * self.scale + self.offset)
        room = round(self.end) - (self.last_dts or 0)
        if self.last_dts is not None and first_dts <= self.last_dts and room <= MAX_REORDER:
            self.offset += self.last_dts + 1 - first_dts

    def add(self, p: av.Packet) -> None:
        """Mux one packet of the current run, its timestamps rebased onto the output track."""
        shown = p.pts * self.scale + self.offset
        lasts = p.duration * self.scale if p.duration else self.frame
        p.pts = round(shown)
        p.dts = round(p.dts * self.scale + self.offset)
        if self.last_dts is not None and p.dts <= self.last_dts:
            p.dts = self.last_dts + 1
        if p.dts > p.pts:
            raise RunFailed(f"{self.where}: cannot remux, a packet would decode after it shows ({p.dts} > {p.pts})")
        p.duration = round(lasts)
        p.time_base = self.time_base
        p.stream = self.stream
        if shown + lasts > self.end:
            self.end = shown + lasts
        self.last_dts = p.dts
        self.written.append(p.dts)
        lo, hi = self.shown or (p.pts, p.pts)
        self.shown = (min(lo, p.pts), max(hi, p.pts + p.duration))
        self.out.mux(p)

    def add_reencoded(
        self, segment: Segment, source: av.video.stream.VideoStream, frames: Iterator[av.VideoFrame], where: str
    ) -> int:
        """Re-encode frames into a scratch file and append its packets; how many were appended."""
        local = os.path.join(self.scratch, f"part-{len(os.listdir(self.scratch))}.mp4")
        reencode(source, frames, local, where, self._options(segment, source))
        with av.open(local, "r") as container:
            stream = container.streams.video[0]
            packets = [p for p in container.demux(stream) if p.size]
            if packets:
                self.begin(stream, min(packets, key=lambda p: p.pts), where, reencoded=True)
                for p in packets:
                    self.add(p)
        os.remove(local)
        return len(packets)

    def add_segment(self, segment: Segment, *, reencode: bool) -> Placed:
        """Append the frames of `segment`: whole groups of pictures copied, the cut ones re-encoded."""
        where = storage.url(segment.fs, segment.path)
        self.shown = None
        with open_input(segment.fs, segment.path) as container:
            stream = container.streams.video[0]
            half = 1 / (2 * frame_rate(stream))
            lo, hi = Fraction(segment.start_s) - half, Fraction(segment.end_s) - half
            packets = _range_packets(container, lo, hi, where)
            if reencode:
                count, reencoded = (
                    self.add_reencoded(segment, stream, frames_between(stream, packets, lo, hi), where),
                    True,
                )
            else:
                count, reencoded = self._copy_gops(segment, stream, packets, lo, hi, where)
        if not count or self.shown is None:
            raise InvalidInput(f"{where}: no video frame in [{segment.start_s:.6f}s, {segment.end_s:.6f}s)")
        lo, hi = self.shown
        return Placed(float(lo * self.time_base), float(hi * self.time_base), reencoded)

    def check(self, local: str) -> None:
        """The written file indexes exactly the packets muxed, at the decode times given (no data is read)."""
        with av.open(local, "r") as container:
            stream = container.streams.video[0]
            entries = stream.index_entries
            if Fraction(stream.time_base) != self.time_base:
                raise RunFailed(f"{local}: the muxer changed the time base to {stream.time_base}")
            found = array("q", (e.timestamp for e in entries))
        if found != self.written:
            raise RunFailed(
                f"{local}: wrote {len(self.written)} video packets but the file indexes {len(found)}"
                + (" at other decode times" if len(found) == len(self.written) else "")
            )

    def _copy_gops(
        self,
        segment: Segment,
        stream: av.video.stream.VideoStream,
        packets: Iterator[av.Packet],
        lo: Fraction,
        hi: Fraction,
        where: str,
    ) -> tuple[int, bool]:
        tb = Fraction(stream.time_base)
        first, end = math.ceil(lo / tb), math.ceil(hi / tb)  # [lo, hi) in whole ticks
        count, reencoded, copying = 0, False, False
        for gop in _gops(packets):
            kept = sum(1 for p in gop if first <= p.pts < end)
            if not kept:
                continue
            # A group can be copied when all of it is kept and it decodes alone (or follows a copied group).
            if kept == len(gop) and gop[0].is_keyframe and (copying or gop[0].pts == min(p.pts for p in gop)):
                if not copying:
                    self.begin(stream, gop[0], where, reencoded=False)
                    copying = True
                for p in gop:
                    self.add(p)
                count += kept
                continue
            copying, reencoded = False, True
            added = self.add_reencoded(segment, stream, frames_between(stream, iter(gop), lo, hi), where)
            if added != kept:
                raise RunFailed(f"{where}: decoded {added} of the {kept} frames of a cut group of pictures")
            count += added
        return count, reencoded


def concat(segments: list[Segment], fs: AbstractFileSystem, out_path: str) -> list[Placed]:
    """Remux the segments, in order, into one mp4 at `out_path` on `fs`; where each one landed.

    Packets are copied with their timestamps rebased by the running end time of what was written, so
    inputs that are themselves concatenations, or many files per camera, keep exact timestamps. Only a
    group of pictures cut by a segment boundary is re-encoded. When the encoder's headers differ from the
    source's (other encoder settings), no single track can hold both, so every segment of this file is
    re-encoded instead. Memory holds one group of pictures, whatever the segment's length.
    """
    if not segments:
        raise ValueError("concat needs at least one segment")
    try:
        return _concat(segments, fs, out_path, reencode=False)
    except _ReencodedMismatch:
        return _concat(segments, fs, out_path, reencode=True)


def _concat(segments: list[Segment], fs: AbstractFileSystem, out_path: str, *, reencode: bool) -> list[Placed]:
    with (
        tempfile.TemporaryDirectory(prefix="raymerge-video-") as scratch,
        local_output(fs, out_path) as local,
    ):
        with av.open(local, "w", format="mp4") as out:
            track = _Track(out, scratch)
            placed = [track.add_segment(segment, reencode=reencode) for segment in segments]
        track.check(local)
        return placed
