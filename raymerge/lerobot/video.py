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
import os
import shutil
import tempfile
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np
from fsspec import AbstractFileSystem

from raymerge import storage
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
    if src_fs == dst_fs:
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
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise InvalidInput(f"{stream.container.name}: video stream has no frame rate")
    return Fraction(rate)


def probe(fs: AbstractFileSystem, path: str) -> StreamInfo:
    with _open_input(fs, path) as container:
        stream = container.streams.video[0]
        rate = _rate(stream)
        frames = stream.frames or sum(1 for p in container.demux(stream) if p.size)
        duration = float(stream.duration * stream.time_base) if stream.duration else float(frames / rate)
        return StreamInfo(
            codec=_codec_name(stream),
            pix_fmt=stream.codec_context.pix_fmt or "",
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=float(rate),
            frames=int(frames),
            duration_s=duration,
            extradata=_extradata_digest(stream),
        )


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
) -> av.video.stream.VideoStream:
    """An encoding stream whose keyframes fall exactly every `gop` frames (no scene-cut keyframes)."""
    stream = container.add_stream(encoder, rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    params = ["scenecut=0"]
    if gop is not None:
        stream.codec_context.gop_size = gop
        params += [f"keyint={gop}", f"min-keyint={gop}"]
    if encoder == "libx264":
        stream.codec_context.options = {"x264-params": ":".join(params)}
    return stream


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


@dataclass
class _Piece:
    """One segment's packets in decode order, timed in the time base of `stream` (kept open while muxed)."""

    stream: av.video.stream.VideoStream
    packets: list[av.Packet]
    start: Fraction
    reencoded: bool
    where: str


def _seconds(ts: int, time_base: Fraction) -> Fraction:
    return ts * Fraction(time_base)


def _read_range(
    container: av.container.InputContainer, start_s: float, end_s: float, where: str
) -> tuple[list[av.Packet], int, list[int]]:
    """Packets from the keyframe that precedes [start_s, end_s) through the last one shown in it, in
    decode order; with the index of that keyframe and the indices of the packets shown in the range.

    A frame belongs to the range when it is shown in [start_s, end_s) to within half a frame, so float
    timestamps from metadata select the frames they name.
    """
    stream = container.streams.video[0]
    tb = Fraction(stream.time_base)
    half = 1 / (2 * _rate(stream))
    lo, hi = Fraction(start_s) - half, Fraction(end_s) - half
    back = Fraction(0)
    while True:
        target = Fraction(start_s) - back
        container.seek(int(target / tb) if target > 0 else 0, stream=stream)
        packets: list[av.Packet] = []
        for p in container.demux(stream):
            if not p.size:
                continue
            if p.pts is None or p.dts is None:
                raise RunFailed(f"{where}: video packets without timestamps cannot be remuxed")
            if p.dts * tb >= hi:  # decode order: every later packet shows at or after its dts
                break
            packets.append(p)
        inside = [i for i, p in enumerate(packets) if lo <= p.pts * tb < hi]
        if not inside:
            raise InvalidInput(f"{where}: no video frame in [{start_s:.6f}s, {end_s:.6f}s)")
        first_shown = min(packets[i].pts for i in inside)
        keys = [i for i in range(inside[0] + 1) if packets[i].is_keyframe and packets[i].pts <= first_shown]
        if keys:
            return packets, keys[-1], inside
        if target <= 0:
            raise RunFailed(f"{where}: no keyframe before {start_s:.6f}s; the stream cannot be decoded there")
        back = max(2 * back, Fraction(1))


def _starts_clean(packets: list[av.Packet], inside: list[int]) -> bool:
    """True when the range's packets can be copied alone: they open on a keyframe shown first and form
    one run in decode order (so nothing they reference was left out)."""
    head = packets[inside[0]]
    return (
        head.is_keyframe
        and head.pts == min(packets[i].pts for i in inside)
        and inside == list(range(inside[0], inside[-1] + 1))
    )


def _decoded_range(
    container: av.container.InputContainer, packets: list[av.Packet], key: int, inside: list[int]
) -> list[av.VideoFrame]:
    """The frames shown in the range, decoded from the keyframe before it, in display order."""
    ctx = container.streams.video[0].codec_context
    wanted = {packets[i].pts for i in inside}
    frames = [f for p in packets[key : inside[-1] + 1] for f in ctx.decode(p)]
    frames += ctx.decode(None)
    return sorted((f for f in frames if f.pts in wanted), key=lambda f: f.pts)


def _reencode(source: av.video.stream.VideoStream, frames: list[av.VideoFrame], local: str, where: str) -> None:
    """Encode frames with the source's codec, pixel format, size and rate."""
    codec = _codec_name(source)
    encoder = available_encoder(codec)
    if encoder is None:
        raise RunFailed(f"{where}: re-encoding needs a {codec} encoder, which this PyAV build does not ship")
    ctx = source.codec_context
    with av.open(local, "w", format="mp4") as out:
        stream = _add_encoder_stream(out, encoder, _rate(source), ctx.width, ctx.height, ctx.pix_fmt, None)
        _encode_all(out, stream, iter(frames))


def _piece(segment: Segment, stack: contextlib.ExitStack, scratch: str, *, reencode: bool = False) -> _Piece:
    where = storage.url(segment.fs, segment.path)
    container = stack.enter_context(_open_input(segment.fs, segment.path))
    packets, key, inside = _read_range(container, segment.start_s, segment.end_s, where)
    stream = container.streams.video[0]
    if not reencode and _starts_clean(packets, inside):
        start = _seconds(packets[inside[0]].pts, stream.time_base)
        return _Piece(stream, [packets[i] for i in inside], start, False, where)
    local = os.path.join(scratch, f"reencoded-{len(os.listdir(scratch))}.mp4")
    _reencode(stream, _decoded_range(container, packets, key, inside), local, where)
    recontainer = stack.enter_context(av.open(local, "r"))
    restream = recontainer.streams.video[0]
    repackets = [p for p in recontainer.demux(restream) if p.size]
    return _Piece(restream, repackets, _seconds(min(p.pts for p in repackets), restream.time_base), True, where)


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


class _ReencodedMismatch(RunFailed):
    """A re-encoded segment's codec parameters differ from the copied ones: the file must be re-encoded whole."""


def _check_same_stream(first: dict[str, Any], first_where: str, first_reencoded: bool, piece: _Piece) -> None:
    other = _signature(piece.stream)
    different = [name for name in first if first[name] != other[name]]
    if not different:
        return
    problems = ", ".join(f"{name} {first[name]} != {other[name]}" for name in different)
    message = f"{first_where} and {piece.where} cannot be concatenated without re-encoding: {problems}"
    if different == ["extradata sha256"] and (first_reencoded or piece.reencoded):
        raise _ReencodedMismatch(f"{message} (a re-encoded segment's encoder settings differ from the source's)")
    raise InvalidInput(message)


class _Muxer:
    """Appends pieces to one output stream, each starting where the previous one's last frame ends."""

    def __init__(self, out: av.container.OutputContainer, template: av.video.stream.VideoStream) -> None:
        self.out = out
        self.stream = out.add_stream_from_template(template, opaque=True)  # remux: never opened to encode
        self.time_base = Fraction(template.time_base)
        self.frame = 1 / _rate(template)
        self.end = Fraction(0)
        self.last_dts: int | None = None

    def append(self, piece: _Piece) -> None:
        tb = Fraction(piece.stream.time_base)
        shift = self.end - piece.start
        first_dts = round((piece.packets[0].dts * tb + shift) / self.time_base)
        if self.last_dts is not None and first_dts <= self.last_dts:
            # A source with a longer B-frame delay than the previous one: leave a gap rather than reorder.
            shift += (self.last_dts + 1 - first_dts) * self.time_base
        for p in piece.packets:
            shown = p.pts * tb + shift
            lasts = p.duration * tb if p.duration else self.frame
            p.pts = round(shown / self.time_base)
            p.dts = round((p.dts * tb + shift) / self.time_base)
            p.duration = round(lasts / self.time_base)
            p.time_base = self.time_base
            p.stream = self.stream
            self.end = max(self.end, shown + lasts)
            self.last_dts = p.dts
            self.out.mux(p)


def _placements(local: str, pieces: list[tuple[int, bool]]) -> list[Placed]:
    """Each piece's first and end display time in the written file, read back from its packets;
    `pieces` holds each piece's packet count and whether it was re-encoded."""
    with av.open(local, "r") as container:
        stream = container.streams.video[0]
        tb = Fraction(stream.time_base)
        frame = 1 / _rate(stream)
        shown = sorted((p.pts, p.duration) for p in container.demux(stream) if p.size)
    expected = sum(count for count, _ in pieces)
    if len(shown) != expected:
        raise RunFailed(f"{local}: wrote {expected} video packets but read back {len(shown)}")
    placed, at = [], 0
    for count, reencoded in pieces:
        first, (last, lasts) = shown[at][0], shown[at + count - 1]
        end = last * tb + (lasts * tb if lasts else frame)
        placed.append(Placed(float(first * tb), float(end), reencoded))
        at += count
    return placed


def concat(segments: list[Segment], fs: AbstractFileSystem, out_path: str) -> list[Placed]:
    """Remux the segments, in order, into one mp4 at `out_path` on `fs`; where each one landed.

    Packets are copied with their timestamps rebased by the running end time of what was written, so
    inputs that are themselves concatenations, or many files per camera, keep exact timestamps. When a
    segment had to be re-encoded and the encoder's headers differ from the source's (other encoder
    settings), no single track can hold both, so every segment of this file is re-encoded instead.
    """
    if not segments:
        raise ValueError("concat needs at least one segment")
    try:
        return _concat(segments, fs, out_path, reencode=False)
    except _ReencodedMismatch:
        return _concat(segments, fs, out_path, reencode=True)


def _concat(segments: list[Segment], fs: AbstractFileSystem, out_path: str, *, reencode: bool) -> list[Placed]:
    written: list[tuple[int, bool]] = []
    with (
        tempfile.TemporaryDirectory(prefix="raymerge-video-") as scratch,
        _local_output(fs, out_path) as local,
    ):
        with av.open(local, "w", format="mp4") as out:
            muxer: _Muxer | None = None
            for segment in segments:
                with contextlib.ExitStack() as inputs:
                    piece = _piece(segment, inputs, scratch, reencode=reencode)
                    if muxer is None:
                        muxer, first, first_where = _Muxer(out, piece.stream), _signature(piece.stream), piece.where
                    else:
                        _check_same_stream(first, first_where, written[0][1], piece)
                    muxer.append(piece)
                    written.append((len(piece.packets), piece.reencoded))
        return _placements(local, written)
