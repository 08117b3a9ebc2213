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
import numpy as np
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.errors import InvalidInput, RunFailed
from raymerge.lerobot.video.decode import frames_between
from raymerge.lerobot.video.encode import available_encoder, matching_x264_options, reencode
from raymerge.lerobot.video.io import VideoSource, local_output
from raymerge.lerobot.video.packets import Segment, Sources, gops, range_packets, timestamps
from raymerge.lerobot.video.probe import codec_name, extradata_digest, frame_rate, time_base

__all__ = ["Placed", "Segment", "concat"]

# Frames H.264 can hold back for reordering: decode times a run may borrow from the previous run's gap.
MAX_REORDER = 16


@dataclass(frozen=True)
class Placed:
    """Where a segment landed in the output file, measured from the written stream."""

    from_timestamp: float
    to_timestamp: float
    reencoded: bool


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


def _ticks(x: Ticks) -> Ticks:
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

    def __init__(self, out: av.container.OutputContainer, scratch: str, sources: Sources) -> None:
        self.out, self.scratch, self.sources = out, scratch, sources
        self.stream: av.video.stream.VideoStream | None = None
        self.first: tuple[dict[str, Any], str, bool] | None = None
        self.time_base = Fraction(1)
        # In ticks of the output time base: plain ints whenever the source's ticks map onto whole output
        # ticks (the usual case), so the per-packet arithmetic below stays integer.
        self.end: Ticks = 0
        self.last_dts: int | None = None
        self.written = array("q")  # every muxed packet's dts, checked against the file's index at the end
        self.presented = array("q")  # and its pts
        self.shown: tuple[int, int] | None = None  # the current piece's first and end presentation tick
        self.scale: Ticks = 1
        self.offset: Ticks = 0
        self.frame: Ticks = 0
        self.where = ""
        self.options: dict[str, dict[str, str]] = {}

    def _options(self, video: VideoSource, source: av.video.stream.VideoStream) -> dict[str, str]:
        """Encoder settings matching the source's headers, found once per source file."""
        if video.where not in self.options:
            matched = codec_name(source) == "h264" and available_encoder("h264") == "libx264"
            self.options[video.where] = matching_x264_options(video, source) if matched else {}
        return self.options[video.where]

    def _accept(self, stream: av.video.stream.VideoStream, where: str, reencoded: bool) -> None:
        signature = _signature(stream)
        if self.first is None:
            self.stream = self.out.add_stream_from_template(stream, opaque=True)  # remux: never opened to encode
            self.time_base = time_base(stream)
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
        pts, dts = timestamps(head, where)
        self.scale = _ticks(time_base(stream) / self.time_base)
        self.frame = _ticks(1 / (frame_rate(stream) * self.time_base))
        self.offset = _ticks(self.end - pts * self.scale)
        first_dts = round(dts * self.scale + self.offset)
        room = round(self.end) - (self.last_dts or 0)
        if self.last_dts is not None and first_dts <= self.last_dts and room <= MAX_REORDER:
            self.offset += self.last_dts + 1 - first_dts

    def add(self, p: av.Packet) -> None:
        """Mux one packet of the current run, its timestamps rebased onto the output track."""
        pts, dts = timestamps(p, self.where)
        shown = pts * self.scale + self.offset
        lasts = p.duration * self.scale if p.duration else self.frame
        p.pts = round(shown)
        p.dts = round(dts * self.scale + self.offset)
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
        self.presented.append(p.pts)
        lo, hi = self.shown or (p.pts, p.pts)
        self.shown = (min(lo, p.pts), max(hi, p.pts + p.duration))
        self.out.mux(p)

    def add_reencoded(
        self, video: VideoSource, source: av.video.stream.VideoStream, frames: Iterator[av.VideoFrame], where: str
    ) -> int:
        """Re-encode frames into a scratch file and append its packets; how many were appended."""
        local = os.path.join(self.scratch, f"part-{len(os.listdir(self.scratch))}.mp4")
        reencode(source, frames, local, where, self._options(video, source))
        with av.open(local, "r") as container:
            stream = container.streams.video[0]
            packets = [p for p in container.demux(stream) if p.size]
            if packets:
                self.begin(stream, min(packets, key=lambda p: timestamps(p, where)[0]), where, reencoded=True)
                for p in packets:
                    self.add(p)
        os.remove(local)
        return len(packets)

    def add_segment(self, segment: Segment, *, reencode: bool) -> Placed:
        """Append the frames of `segment`: whole groups of pictures copied, the cut ones re-encoded."""
        where = storage.url(segment.fs, segment.path)
        self.shown = None
        video, container = self.sources.open(segment)
        stream = container.streams.video[0]
        half = 1 / (2 * frame_rate(stream))
        lo, hi = Fraction(segment.start_s) - half, Fraction(segment.end_s) - half
        packets = range_packets(video, container, lo, hi, where)
        if reencode:
            count, reencoded = self.add_reencoded(video, stream, frames_between(stream, packets, lo, hi), where), True
        else:
            count, reencoded = self._copy_gops(video, stream, packets, lo, hi, where)
        if not count or self.shown is None:
            raise InvalidInput(f"{where}: no video frame in [{segment.start_s:.6f}s, {segment.end_s:.6f}s)")
        lo, hi = self.shown
        return Placed(float(lo * self.time_base), float(hi * self.time_base), reencoded)

    def finish(self, local: str) -> None:
        """Give every packet of the closed file the same duration, one frame (`_retime`) unless they have it
        already, then `check` it."""
        frame = self.frame
        dts = np.frombuffer(self.written, dtype=np.int64)
        if isinstance(frame, int) and frame > 0 and len(dts) > 1 and (np.diff(dts) != frame).any():
            self._retime(local, frame)
        self.check(local)

    def _retime(self, local: str, frame: int) -> None:
        """Rewrite the file with decode times exactly one frame apart, as an encoder writes them: where runs
        with different B-frame delays meet (copied groups, re-encoded ones), decode times would otherwise
        jump, and tools that take the frame rate from sample durations (FFmpeg's avg_frame_rate) would read
        a wrong one. Presentation times stay; the first decode time is the earliest that keeps every packet
        decoded at or before it shows. Local work on the file just written: nothing is read twice."""
        pts = np.frombuffer(self.presented, dtype=np.int64)
        steps = np.arange(len(pts), dtype=np.int64) * frame
        dts = int((pts - steps).min()) + steps
        retimed = f"{local}.retimed.mp4"
        with av.open(local, "r") as src, av.open(retimed, "w", format="mp4") as out:
            stream = src.streams.video[0]
            track = out.add_stream_from_template(stream, opaque=True)
            for i, p in enumerate(q for q in src.demux(stream) if q.size):
                if p.pts != pts[i]:
                    raise RunFailed(f"{local}: packet {i} reads back at pts {p.pts}, written at {pts[i]}")
                p.dts, p.duration, p.stream = int(dts[i]), frame, track
                out.mux(p)
        os.replace(retimed, local)
        self.written = array("q", dts.tolist())

    def check(self, local: str) -> None:
        """The written file indexes exactly the packets muxed, at the decode times given (no data is read)."""
        with av.open(local, "r") as container:
            stream = container.streams.video[0]
            entries = stream.index_entries
            if time_base(stream) != self.time_base:
                raise RunFailed(f"{local}: the muxer changed the time base to {stream.time_base}")
            found = array("q", (e.timestamp for e in entries))
        if found != self.written:
            raise RunFailed(
                f"{local}: wrote {len(self.written)} video packets but the file indexes {len(found)}"
                + (" at other decode times" if len(found) == len(self.written) else "")
            )

    def _copy_gops(
        self,
        video: VideoSource,
        stream: av.video.stream.VideoStream,
        packets: Iterator[av.Packet],
        lo: Fraction,
        hi: Fraction,
        where: str,
    ) -> tuple[int, bool]:
        tb = time_base(stream)
        first, end = math.ceil(lo / tb), math.ceil(hi / tb)  # [lo, hi) in whole ticks
        count, reencoded, copying = 0, False, False
        previous: list[_Saved] = []  # the group before, as read: an open group's leading pictures reference it
        for gop in gops(packets):
            stamps = [timestamps(p, where) for p in gop]  # (pts, dts) of each packet
            pts = [t for t, _ in stamps]
            kept = sum(1 for t in pts if first <= t < end)
            saved = [_Saved(bytes(p), t, d, p.is_keyframe) for p, (t, d) in zip(gop, stamps, strict=True)]
            if not kept:
                previous = saved
                continue
            # A group can be copied when all of it is kept and it decodes alone (or follows a copied group).
            if kept == len(gop) and gop[0].is_keyframe and (copying or pts[0] == min(pts)):
                if not copying:
                    self.begin(stream, gop[0], where, reencoded=False)
                    copying = True
                for p in gop:
                    self.add(p)
                count += kept
                previous = saved
                continue
            copying, reencoded = False, True
            leading = any(t < pts[0] for t in pts)  # open group (HEVC CRA): decode the group before too
            warm_up = [s.packet(tb) for s in previous] if leading else []
            shown = set(pts)
            frames = frames_between(stream, itertools.chain(warm_up, gop), lo, hi, shown)
            added = self.add_reencoded(video, stream, frames, where)
            if added != kept:
                raise RunFailed(f"{where}: decoded {added} of the {kept} frames of a cut group of pictures")
            count += added
            previous = saved
        return count, reencoded


@dataclass(frozen=True)
class _Saved:
    """A packet as it was read (muxing rebases the packet itself), to decode again."""

    data: bytes
    pts: int
    dts: int
    key: bool

    def packet(self, time_base: Fraction) -> av.Packet:
        p = av.Packet(self.data)
        p.pts, p.dts, p.is_keyframe, p.time_base = self.pts, self.dts, self.key, time_base
        return p


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
        sources = Sources()
        try:
            with av.open(local, "w", format="mp4") as out:
                track = _Track(out, scratch, sources)
                placed = [track.add_segment(segment, reencode=reencode) for segment in segments]
        finally:
            sources.close()
        track.finish(local)
        return placed
