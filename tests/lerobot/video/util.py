"""What the video tests share: real mp4 files encoded by the tests, and frames read back as LeRobot reads them."""

from __future__ import annotations

import os
from pathlib import Path

import av
import fsspec
import numpy as np

from raymerge.lerobot.video.decode import decode_at
from raymerge.lerobot.video.encode import available_encoder, encode
from raymerge.lerobot.video.remux import Placed

os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only
FPS = 10
LOCAL = fsspec.filesystem("file")
# LeRobot's default tolerance: a timestamp must name a frame's time almost exactly.
STRICT = 1e-4
ENCODERS = [e for e in ("libx264", "libsvtav1") if available_encoder(e)]
OTHER_X264 = {"x264-params": "cabac=0:bframes=0:ref=1:keyint=5:min-keyint=5:scenecut=0"}


def frames(n: int, seed: int, height: int = 24, width: int = 32) -> np.ndarray:
    """Smooth moving gradients: compress well, differ per frame and per seed."""
    t = np.arange(n)[:, None, None]
    y = np.arange(height)[None, :, None]
    x = np.arange(width)[None, None, :]
    base = (x * 4 + y * 3 + t * 9 + seed * 50) % 256
    return np.stack([base, (base * 2 + seed * 30) % 256, 255 - base], axis=-1).astype(np.uint8)


def make(tmp: Path, name: str, n: int, seed: int, *, gop: int = 5, codec: str | None = None, **size) -> str:
    path = str(tmp / name)
    encode(frames(n, seed, **size), FPS, LOCAL, path, codec=codec, gop=gop)
    return path


def keyframe_times(path: str) -> list[float]:
    with av.open(path) as c:
        s = c.streams.video[0]
        return sorted(float(p.pts * s.time_base) for p in c.demux(s) if p.size and p.is_keyframe)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def spots(n: int) -> list[int]:
    """Frame indices at the start, middle and end of a segment of n frames."""
    return sorted({0, 1, n // 2, n - 2, n - 1})


def assert_frames_equal(src: str, src_start: float, out: str, placed: Placed, n: int, fs=LOCAL, out_fs=LOCAL) -> None:
    """Frames read as LeRobot does (from_timestamp + float32 timestamp) equal the source's decoded frames."""
    idx = spots(n)
    ts = [float(np.float32(i / FPS)) for i in idx]
    expected = decode_at(fs, src, [src_start + t for t in ts], tolerance_s=STRICT)
    got = decode_at(out_fs, out, [placed.from_timestamp + t for t in ts], tolerance_s=STRICT)
    assert np.array_equal(expected, got), f"frames {idx} of {src} differ in {out}"


def make_other_x264(tmp: Path, name: str, n: int, seed: int, options: dict[str, str] = OTHER_X264) -> str:
    """An h264 file from other x264 settings than `video.encode` uses: other SPS/PPS (extradata)."""
    path = str(tmp / name)
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = 32, 24, "yuv420p"
        s.codec_context.options = options
        for i, f in enumerate(frames(n, seed)):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts = i
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return path
