"""LeRobot videos: probe, remux-concatenate, cut, copy, encode and read frames of mp4 files.

Concatenation copies packets and rebases their timestamps, so the frames of the output are bit-identical
to the sources' (no decode, no re-encode). Only a segment that does not start on a keyframe is re-encoded,
alone. Every from/to timestamp returned is measured from the file that was written, so that reading frame
`i` of a segment at `from_timestamp + i / fps` returns that frame, whatever the number of source files.

Works on any fsspec filesystem: remote sources are read through `fs.open` file objects, remote outputs are
written to a local temporary file (mp4 muxing seeks back to finish the header) and uploaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import os
import re
import shutil
import tempfile
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np
from fsspec import AbstractFileSystem

from raymerge import directio, storage
from raymerge.errors import InvalidInput, RunFailed

# Encoders per codec, best first; the first one this PyAV build ships is used.
ENCODERS: dict[str, tuple[str, ...]] = {
    "h264": ("libx264", "libopenh264"),
    "av1": ("libsvtav1", "libaom-av1", "librav1e"),
    "hevc": ("libx265",),
}
DEFAULT_CODECS = ("h264", "av1")
PIX_FMT = "yuv420p"
COPY_BUFFER = 16 * 1024 * 1024
# Frames H.264 can hold back for reordering: decode times a run may borrow from the previous run's gap.
MAX_REORDER = 16
# Query timestamps further apart than this are served by a fresh seek instead of decoding the gap.
SEEK_GAP_S = 2.0


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


# -- reading and writing through fsspec --------------------------------------------------------


@contextlib.contextmanager
def _open_input(fs: AbstractFileSystem, path: str) -> Iterator[av.container.InputContainer]:
    where = storage.url(fs, path)
    try:
        with contextlib.ExitStack() as stack:
            source = path if storage.is_local(fs) else stack.enter_context(fs.open(path, "rb"))
            container = stack.enter_context(av.open(source, "r"))
            if not container.streams.video:
                raise InvalidInput(f"{where}: no video stream in this file")
            yield container
    except FileNotFoundError:
        raise InvalidInput(f"{where}: video file not found") from None
    except av.error.FFmpegError as e:
        raise InvalidInput(f"{where}: not a readable video file: {e}") from None


@contextlib.contextmanager
def _local_output(fs: AbstractFileSystem, path: str) -> Iterator[str]:
    """A local path to write; uploaded to `path` on `fs` when that is remote. A failed write leaves nothing."""
    if storage.is_local(fs):
        fs.makedirs(storage.parent(path), exist_ok=True)
        try:
            yield path
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            raise
        return
    with tempfile.TemporaryDirectory(prefix="raymerge-video-") as tmp:
        local = os.path.join(tmp, storage.basename(path))
        yield local
        fs.put_file(local, path)


def copy(src_fs: AbstractFileSystem, src_path: str, dst_fs: AbstractFileSystem, dst_path: str) -> None:
    """Whole-file copy; server-side when both ends are the same store."""
    if storage.is_local(dst_fs):
        dst_fs.makedirs(storage.parent(dst_path), exist_ok=True)
    if storage.is_local(src_fs) and storage.is_local(dst_fs):
        directio.copy_file(src_path, dst_path)
    elif src_fs == dst_fs:
        dst_fs.copy(src_path, dst_path)
    elif storage.is_local(src_fs):
        dst_fs.put_file(src_path, dst_path)
    elif storage.is_local(dst_fs):
        src_fs.get_file(src_path, dst_path)
    else:
        with src_fs.open(src_path, "rb") as r, dst_fs.open(dst_path, "wb") as w:
            shutil.copyfileobj(r, w, COPY_BUFFER)


# -- probing -----------------------------------------------------------------------------------


def _codec_name(stream: av.video.stream.VideoStream) -> str:
    """The format's name (`av1`), not the decoder's (`libdav1d`)."""
    return stream.codec_context.codec.canonical_name


def _extradata_digest(stream: av.video.stream.VideoStream) -> str:
    return hashlib.sha256(bytes(stream.codec_context.extradata or b"")).hexdigest()


def _rate(stream: av.video.stream.VideoStream) -> Fraction:
    # The nominal rate first: the average comes from the container's duration, which is short of the last
    # frame's end when a file mixes re-encoded groups (no B-frames) with copied ones (decode times ahead).
    rate = stream.guessed_rate or stream.base_rate or stream.average_rate
    if not rate:
        raise InvalidInput(f"{stream.container.name}: video stream has no frame rate")
    return Fraction(rate)


def probe(fs: AbstractFileSystem, path: str, *, index: bool = False) -> StreamInfo:
    """The stream's parameters and true length from its headers and last groups of pictures.

    With `index`, every packet is demuxed to record the groups of pictures (reads the whole file); without,
    only the headers and the last two groups are read, which is all a copy or a whole-file remux needs.
    """
    with _open_input(fs, path) as container:
        stream = container.streams.video[0]
        rate = _rate(stream)
        gops, packets, last_pts = None, len(stream.index_entries), None
        if not index:
            last_pts = _last_pts(container, stream)
        if index or last_pts is None:
            gops, packets = _gop_index(container, stream, rate)
            if gops is not None and len(gops.groups):
                last_pts = int(gops.groups[:, 2].max())
        frames = stream.frames or packets
        if last_pts is not None:  # where the last frame really ends, from its packet
            duration = float(last_pts * Fraction(stream.time_base) + 1 / rate)
        elif stream.duration:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = float(frames / rate)
        return StreamInfo(
            codec=_codec_name(stream),
            pix_fmt=stream.codec_context.pix_fmt or "",
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=float(rate),
            frames=int(frames),
            duration_s=duration,
            extradata=_extradata_digest(stream),
            gops=gops,
        )


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
        Fraction(stream.time_base),
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


# -- encoding ----------------------------------------------------------------------------------


def available_encoder(codec: str) -> str | None:
    """The encoder this PyAV build ships for `codec` (a codec or encoder name), or None."""
    for name in ENCODERS.get(codec, (codec,)):
        try:
            av.codec.Codec(name, "w")
        except (av.error.FFmpegError, ValueError):
            continue
        return name
    return None


def default_encoder() -> str:
    for codec in DEFAULT_CODECS:
        name = available_encoder(codec)
        if name is not None:
            return name
    raise RunFailed(f"this PyAV build ships no encoder for any of {', '.join(DEFAULT_CODECS)}")


def _add_encoder_stream(
    container: av.container.OutputContainer,
    encoder: str,
    rate: Fraction,
    width: int,
    height: int,
    pix_fmt: str,
    gop: int | None,
    options: dict[str, str] | None = None,
) -> av.video.stream.VideoStream:
    """An encoding stream whose keyframes fall exactly every `gop` frames (no scene-cut keyframes)."""
    stream = container.add_stream(encoder, rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    params = ["scenecut=0"]
    if gop is not None:
        stream.codec_context.gop_size = gop
        params += [f"keyint={gop}", f"min-keyint={gop}"]
    extra = {"x264-params": ":".join(params)} if encoder == "libx264" else {}
    stream.codec_context.options = {**(options or {}), **extra}
    return stream


X264_PRESETS = ("medium", "ultrafast", "superfast", "veryfast", "faster", "fast", "slow", "slower", "veryslow")
AV_CODEC_FLAG_GLOBAL_HEADER = 1 << 22


def _parameter_sets(extradata: bytes) -> list[bytes]:
    """H.264 SPS/PPS NAL units from either form of extradata: avcC (mp4) or Annex B (raw encoder)."""
    if extradata[:1] == b"\x01" and len(extradata) > 6:
        units, at = [], 5
        for count_mask in (0x1F, 0xFF):
            count = extradata[at] & count_mask
            at += 1
            for _ in range(count):
                size = int.from_bytes(extradata[at : at + 2], "big")
                units.append(extradata[at + 2 : at + 2 + size])
                at += 2 + size
        return units
    return [u.strip(b"\x00") for u in extradata.split(b"\x00\x00\x01") if u.strip(b"\x00")]


def _x264_options(fs: AbstractFileSystem, path: str, source: av.video.stream.VideoStream) -> dict[str, str]:
    """x264 settings whose SPS/PPS equal the source's, so re-encoded groups share its mp4 track.

    The crf comes from the settings string x264 writes into the first keyframe; the preset is found by
    opening encoders (no frame is encoded) until the headers match. Empty when none does.
    """
    with _open_input(fs, path) as container:
        head = next((p for p in container.demux(container.streams.video[0]) if p.size), None)
    found = re.search(rb"crf=([0-9.]+)", bytes(head)) if head is not None else None
    crf = {"crf": found.group(1).decode()} if found else {}
    wanted = _parameter_sets(bytes(source.codec_context.extradata or b""))
    rate = _rate(source)
    for preset in X264_PRESETS:
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height, ctx.pix_fmt = source.codec_context.width, source.codec_context.height, PIX_FMT
        ctx.time_base, ctx.framerate = 1 / rate, rate
        ctx.flags |= AV_CODEC_FLAG_GLOBAL_HEADER
        ctx.options = {**crf, "preset": preset, "x264-params": "scenecut=0"}
        ctx.open()
        if _parameter_sets(bytes(ctx.extradata or b"")) == wanted:
            return {**crf, "preset": preset}
    return {}


def _encode_all(
    container: av.container.OutputContainer, stream: av.video.stream.VideoStream, frames: Iterator[av.VideoFrame]
) -> None:
    """Encode frames one per tick of 1/fps, whatever timestamps they carried."""
    time_base = 1 / Fraction(stream.codec_context.framerate)
    for i, frame in enumerate(frames):
        frame.pts, frame.time_base = i, time_base
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def encode(
    frames: np.ndarray, fps: int, fs: AbstractFileSystem, path: str, *, codec: str | None = None, gop: int | None = None
) -> None:
    """Write uint8 RGB frames (T, H, W, 3) as an mp4; `codec` is an encoder or codec name, `gop` the keyframe interval."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 (T, H, W, 3) with T > 0, got {frames.dtype} {frames.shape}")
    encoder = available_encoder(codec) if codec else default_encoder()
    if encoder is None:
        raise RunFailed(f"no encoder for {codec!r} in this PyAV build")
    _, height, width, _ = frames.shape
    with _local_output(fs, path) as local, av.open(local, "w", format="mp4") as out:
        stream = _add_encoder_stream(out, encoder, Fraction(fps), width, height, PIX_FMT, gop)
        _encode_all(out, stream, (av.VideoFrame.from_ndarray(f, format="rgb24") for f in frames))


# -- decoding ----------------------------------------------------------------------------------


def _frames_from(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, t: float
) -> Iterator[av.VideoFrame]:
    """Frames in display order, starting at or before time `t` (seeks back further when the
    keyframe found by dts shows later than `t`, as B-frame streams can)."""
    back = 0.0
    while True:
        target = t - back
        container.seek(max(int(target / stream.time_base), 0) if target > 0 else 0, stream=stream)
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
    with _open_input(fs, path) as container:
        stream = container.streams.video[0]
        tol = tolerance_s if tolerance_s is not None else float(1 / _rate(stream)) / 2
        queries = sorted(set(timestamps))
        best: dict[float, tuple[float, float, np.ndarray]] = {}
        for group in _clusters(queries):
            for frame in _frames_from(container, stream, group[0] - tol):
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


# -- concatenation -----------------------------------------------------------------------------


def _range_packets(
    container: av.container.InputContainer, lo: Fraction, hi: Fraction, where: str
) -> Iterator[av.Packet]:
    """Packets in decode order from the keyframe that shows at or before `lo` until none can show before `hi`.

    Seeking finds keyframes by decode time; with B-frames that keyframe can show later than asked, so the
    seek goes further back until the first keyframe shows early enough.
    """
    stream = container.streams.video[0]
    tb = Fraction(stream.time_base)
    frame = 1 / _rate(stream)
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


def _decoded(
    stream: av.video.stream.VideoStream, packets: Iterator[av.Packet], lo: Fraction, hi: Fraction
) -> Iterator[av.VideoFrame]:
    """Frames shown in [lo, hi), decoded from `packets` (which start on a keyframe), in display order."""
    ctx = stream.codec_context
    ctx.flush_buffers()
    tb = Fraction(stream.time_base)
    for p in itertools.chain(packets, [None]):
        for f in ctx.decode(p):
            if f.pts is not None and lo <= f.pts * tb < hi:
                yield f


def _reencode(
    source: av.video.stream.VideoStream,
    frames: Iterator[av.VideoFrame],
    local: str,
    where: str,
    options: dict[str, str],
) -> None:
    """Encode frames with the source's codec, pixel format, size and rate (and encoder `options`)."""
    codec = _codec_name(source)
    encoder = available_encoder(codec)
    if encoder is None:
        raise RunFailed(f"{where}: re-encoding needs a {codec} encoder, which this PyAV build does not ship")
    ctx = source.codec_context
    with av.open(local, "w", format="mp4") as out:
        stream = _add_encoder_stream(out, encoder, _rate(source), ctx.width, ctx.height, ctx.pix_fmt, None, options)
        _encode_all(out, stream, frames)


def _signature(stream: av.video.stream.VideoStream) -> dict[str, Any]:
    """What must be equal for packets of two streams to share one mp4 track."""
    ctx = stream.codec_context
    return {
        "codec": _codec_name(stream),
        "pix_fmt": ctx.pix_fmt,
        "width": ctx.width,
        "height": ctx.height,
        "extradata sha256": _extradata_digest(stream)[:12],
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
            matched = _codec_name(source) == "h264" and available_encoder("h264") == "libx264"
            self.options[where] = _x264_options(segment.fs, segment.path, source) if matched else {}
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
        self.frame = _ticks(1 / (_rate(stream) * self.time_base))
        self.offset = _ticks(self.end - head.pts * self.scale)
        first_dts = round(head.dts * self.scale + self.offset)
        room = round(self.end) - (self.last_dts or 0)
        if self.last_dts is not None and first_dts <= self.last_dts and room <= MAX_REORDER:
            self.offset += self.last_dts + 1 - first_dts

    def add(self, p: av.Packet) -> None:
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
        _reencode(source, frames, local, where, self._options(segment, source))
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
        with _open_input(segment.fs, segment.path) as container:
            stream = container.streams.video[0]
            half = 1 / (2 * _rate(stream))
            lo, hi = Fraction(segment.start_s) - half, Fraction(segment.end_s) - half
            packets = _range_packets(container, lo, hi, where)
            if reencode:
                count, reencoded = self.add_reencoded(segment, stream, _decoded(stream, packets, lo, hi), where), True
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
            added = self.add_reencoded(segment, stream, _decoded(stream, iter(gop), lo, hi), where)
            if added != kept:
                raise RunFailed(f"{where}: decoded {added} of the {kept} frames of a cut group of pictures")
            count += added
        return count, reencoded


def cut_reencodes(index: GopIndex, start_s: float, end_s: float) -> bool:
    """Whether `concat` re-encodes part of the segment [start_s, end_s) of the file `index` describes.

    The rule of `_copy_gops`, on the group index instead of packets: a group the segment keeps only part of
    (it starts before the cut, or ends after it with a frame decoded before the end but shown after it), or
    a first kept group whose keyframe is not its first frame shown (open GOP), is re-encoded.
    """
    tb, half = index.time_base, 1 / (2 * index.rate)
    first = math.ceil((Fraction(start_s) - half) / tb)
    end = math.ceil((Fraction(end_s) - half) / tb)
    key, low, high = index.groups.T
    touched = np.flatnonzero((high >= first) & (low < end))
    if not len(touched):
        return False
    if (low[touched] < first).any() or key[touched[0]] != low[touched[0]]:
        return True
    dts, pts = index.unsafe.T
    return bool((high[touched] >= end).any() and ((dts < end) & (end <= pts)).any())


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
        _local_output(fs, out_path) as local,
    ):
        with av.open(local, "w", format="mp4") as out:
            track = _Track(out, scratch)
            placed = [track.add_segment(segment, reencode=reencode) for segment in segments]
        track.check(local)
        return placed
