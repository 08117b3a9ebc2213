"""Frames to mp4: encoders this PyAV build ships, fixed-interval keyframes, and re-encoding a cut group of
pictures with the source's codec, size, rate and (for x264) the settings that reproduce its headers."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from fractions import Fraction

import av
import numpy as np
from fsspec import AbstractFileSystem

from raymerge.errors import RunFailed
from raymerge.lerobot.video.io import VideoSource, local_output
from raymerge.lerobot.video.probe import codec_name, frame_rate

# Encoders per codec, best first; the first one this PyAV build ships is used.
ENCODERS: dict[str, tuple[str, ...]] = {
    "h264": ("libx264", "libopenh264"),
    "av1": ("libsvtav1", "libaom-av1", "librav1e"),
    "hevc": ("libx265",),
}
DEFAULT_CODECS = ("h264", "av1")
# Packets an encode holds before muxing, to find how deep its frames are reordered.
LOOKAHEAD = 32
PIX_FMT = "yuv420p"


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
    """The first of `DEFAULT_CODECS` this PyAV build can encode: what tests and samples write."""
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
    """An encoding stream whose keyframes fall exactly every `gop` frames (no scene-cut keyframes, for the
    encoders that take settings: x264 and x265)."""
    stream = container.add_stream(encoder, rate=rate)
    if not isinstance(stream, av.video.stream.VideoStream):
        raise RunFailed(f"{encoder} is not a video encoder")
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    params = ["scenecut=0"]
    if gop is not None:
        stream.codec_context.gop_size = gop
        params += [f"keyint={gop}", f"min-keyint={gop}"]
    extra = {f"{encoder[3:]}-params": ":".join(params)} if encoder in ("libx264", "libx265") else {}
    stream.codec_context.options = {**(options or {}), **extra}
    return stream


X264_PRESETS = ("medium", "ultrafast", "superfast", "veryfast", "faster", "fast", "slow", "slower", "veryslow")
AV_CODEC_FLAG_GLOBAL_HEADER = 1 << 22


def _parameter_sets(extradata: bytes) -> list[bytes]:
    """H.264 SPS/PPS NAL units from either form of extradata: avcC (mp4) or Annex B (raw encoder)."""
    if extradata[:1] == b"\x01" and len(extradata) > 6:
        nal_units, at = [], 5
        for count_mask in (0x1F, 0xFF):
            count = extradata[at] & count_mask
            at += 1
            for _ in range(count):
                size = int.from_bytes(extradata[at : at + 2], "big")
                nal_units.append(extradata[at + 2 : at + 2 + size])
                at += 2 + size
        return nal_units
    return [u.strip(b"\x00") for u in extradata.split(b"\x00\x00\x01") if u.strip(b"\x00")]


def matching_x264_options(video: VideoSource, source: av.video.stream.VideoStream) -> dict[str, str]:
    """x264 settings whose SPS/PPS equal the source's, so re-encoded groups share its mp4 track.

    The crf comes from the settings string x264 writes into the first keyframe (read alone from the sample
    table's offsets); the preset is found by opening encoders (no frame is encoded) until the headers match.
    Empty when none does.
    """
    if video.samples is not None and len(video.samples):
        head: bytes | None = video.sample_bytes(0)
    else:
        with video.open() as container:
            first = next((p for p in container.demux(container.streams.video[0]) if p.size), None)
            head = bytes(first) if first is not None else None
    found = re.search(rb"crf=([0-9.]+)", head) if head is not None else None
    crf = {"crf": found.group(1).decode()} if found else {}
    wanted = _parameter_sets(bytes(source.codec_context.extradata or b""))
    rate = frame_rate(source)
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
    """Encode frames one per tick of 1/fps, whatever timestamps they carried.

    Decode times are set one tick apart, from the earliest that keeps every packet decoded at or before it
    shows (found in the first `LOOKAHEAD` packets, which hold the deepest reordering), as encoders write them:
    every sample then lasts one frame. libx265's wrapper can hand out garbage decode times (short encodes).
    """
    time_base = 1 / Fraction(stream.codec_context.framerate)
    pending: list[av.Packet] = []
    first: int | None = None
    count = 0

    def mux(packets: list[av.Packet]) -> None:
        nonlocal count
        for p in packets:
            p.dts = (first or 0) + count
            count += 1
            if p.pts is None or p.dts > p.pts:
                raise RunFailed(f"{container.name}: the encoder reordered frames deeper than {LOOKAHEAD} packets")
            container.mux(p)

    for i, frame in enumerate(itertools.chain(frames, [None])):
        if frame is not None:
            frame.pts, frame.time_base = i, time_base
        packets = stream.encode(frame)
        if first is not None:
            mux(packets)
            continue
        pending += packets
        if len(pending) >= LOOKAHEAD or frame is None:
            first = min((p.pts - k for k, p in enumerate(pending) if p.pts is not None), default=0)
            mux(pending)


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
    with local_output(fs, path) as local, av.open(local, "w", format="mp4") as out:
        stream = _add_encoder_stream(out, encoder, Fraction(fps), width, height, PIX_FMT, gop)
        _encode_all(out, stream, (av.VideoFrame.from_ndarray(f, format="rgb24") for f in frames))


def reencode(
    source: av.video.stream.VideoStream,
    frames: Iterator[av.VideoFrame],
    local: str,
    where: str,
    options: dict[str, str],
) -> None:
    """Encode frames with the source's codec, pixel format, size and rate (and encoder `options`)."""
    codec = codec_name(source)
    encoder = available_encoder(codec)
    if encoder is None:
        raise RunFailed(f"{where}: re-encoding needs a {codec} encoder, which this PyAV build does not ship")
    ctx = source.codec_context
    if ctx.pix_fmt is None:
        raise RunFailed(f"{where}: re-encoding needs the source's pixel format, which its stream does not give")
    with av.open(local, "w", format="mp4") as out:
        stream = _add_encoder_stream(
            out, encoder, frame_rate(source), ctx.width, ctx.height, ctx.pix_fmt, None, options
        )
        _encode_all(out, stream, frames)
