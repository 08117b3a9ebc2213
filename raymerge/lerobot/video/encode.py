"""Frames to mp4: encoders this PyAV build ships, fixed-interval keyframes, and re-encoding a cut group of
pictures with the source's codec, size, rate and (for x264) the settings that reproduce its headers."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from fsspec import AbstractFileSystem

from raymerge.errors import InvalidInput, RunFailed
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


@dataclass(frozen=True)
class EncoderSettings:
    """A checked encoder setup, as LeRobot's `encode_video_frames` takes it: the encoder this PyAV build ships,
    the pixel format, the keyframe interval and the encoder's own options (crf, preset, fast decode)."""

    encoder: str
    codec: str  # as info.json names it: h264, hevc or av1
    pix_fmt: str
    gop: int | None
    options: tuple[tuple[str, str], ...]

    @classmethod
    def of(
        cls,
        codec: str,
        pix_fmt: str,
        *,
        crf: float | None = None,
        gop: int | None = None,
        preset: int | str | None = None,
        fast_decode: int = 0,
        extra: dict[str, str] | None = None,
    ) -> EncoderSettings:
        """Settings for `codec` (a codec or encoder name); an encoder or pixel format this PyAV build lacks is
        refused by name, before anything is encoded."""
        known = [*ENCODERS, *(e for names in ENCODERS.values() for e in names)]
        if codec not in known:
            raise InvalidInput(f"encode.codec {codec!r}: not one of {', '.join(known)} (the codecs LeRobot reads)")
        encoder = available_encoder(codec)
        if encoder is None:
            found = [e for e in known[len(ENCODERS) :] if available_encoder(e)]
            raise InvalidInput(
                f"encode.codec {codec!r}: this PyAV build has no encoder for it (it has {', '.join(found)})"
            )
        formats = [f.name for f in av.codec.Codec(encoder, "w").video_formats or []]
        if pix_fmt not in formats:
            raise InvalidInput(f"encode.pix_fmt {pix_fmt!r}: {encoder} takes {', '.join(formats)}")
        options = dict(extra or {})
        if crf is not None:
            options["crf"] = f"{crf:g}"
        if encoder == "libsvtav1":
            options["preset"] = str(12 if preset is None else preset)  # LeRobot's default preset for SVT-AV1
            if fast_decode:
                options["svtav1-params"] = f"fast-decode={min(fast_decode, 2)}"
        elif preset is not None:
            options["preset"] = str(preset)
        if fast_decode and encoder in ("libx264", "libx265"):
            options["tune"] = "fastdecode"
        name = next((c for c, names in ENCODERS.items() if encoder in names), encoder)
        return cls(encoder, name, pix_fmt, gop, tuple(sorted(options.items())))


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
    options = dict(options or {})
    params = ["scenecut=0"]
    if gop is not None:
        stream.codec_context.gop_size = gop
        params += [f"keyint={gop}", f"min-keyint={gop}"]
    if encoder in ("libx264", "libx265"):
        key = f"{encoder[3:]}-params"
        options[key] = ":".join([*filter(None, [options.get(key)]), *params])
    stream.codec_context.options = options
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


def encode_frames(
    frames: Iterable[av.VideoFrame],
    fps: int,
    width: int,
    height: int,
    fs: AbstractFileSystem,
    path: str,
    settings: EncoderSettings,
    threads: int | None = None,
) -> None:
    """Write frames (any pixel format, converted to the settings') as an mp4 at `path`, one every 1/fps: every
    sample lasts one frame whatever timestamps the frames carried; `threads` caps the encoder's threads."""
    with local_output(fs, path) as local, av.open(local, "w", format="mp4") as out:
        stream = _add_encoder_stream(
            out, settings.encoder, Fraction(fps), width, height, settings.pix_fmt, settings.gop, dict(settings.options)
        )
        if threads:
            stream.codec_context.thread_count = threads
        _encode_all(out, stream, iter(frames))
