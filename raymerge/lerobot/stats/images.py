"""Stats of `image` features (PNG or JPEG bytes embedded in the data parquet), recomputed from every decoded
image of each episode by the data task that writes the episode: per channel in [0, 1] in LeRobot's (3, 1, 1)
layout, per episode exact, and for `stats.json` a summary whose quantiles are exact (each channel's 256 values
counted over every image)."""

from __future__ import annotations

from itertools import pairwise

import av
import numpy as np
import pyarrow as pa

from raymerge.errors import RunFailed
from raymerge.lerobot.arrays import run_starts
from raymerge.lerobot.stats.per_episode import frame_stats, pixel_histogram
from raymerge.lerobot.stats.summary import Summary

# Image codecs by the first bytes of an embedded image.
_CODECS = {b"\x89PNG": "png", b"\xff\xd8\xff": "mjpeg"}
_LEVELS = np.arange(256) / 255.0


def decode(blobs: pa.Array, key: str) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB images from a column of image structs (`bytes`, `path`)."""
    out = []
    for blob in blobs.field("bytes").to_pylist():
        codec = next((c for magic, c in _CODECS.items() if blob and blob.startswith(magic)), None)
        if codec is None:
            raise RunFailed(f"{key}: an image is missing or neither PNG nor JPEG")
        # a decoder per image: FFmpeg's PNG decoder fed a second image decodes it against the first (APNG-style)
        ctx = av.CodecContext.create(codec, "r")
        assert isinstance(ctx, av.VideoCodecContext)
        out.append(ctx.decode(av.Packet(blob))[0].to_ndarray(format="rgb24"))
    return np.stack(out)


def image_stats(table: pa.Table, key: str) -> tuple[pa.Table, Summary]:
    """The per-episode stats columns `stats/<key>/<stat>` of a table of frames (a row per episode, in the
    table's order) and the summary of all its images."""
    episodes = table["episode_index"].to_numpy()
    bounds = np.r_[run_starts(episodes), len(episodes)].tolist()
    blobs = table[key].combine_chunks()
    rows, histogram = [], np.zeros((3, 256), dtype=np.int64)
    for a, b in pairwise(bounds):
        frames = decode(blobs.slice(a, b - a), key)
        rows.append(frame_stats(frames))
        histogram += pixel_histogram(frames)
    moments = {name: np.array([np.ravel(r[name]) for r in rows]) for name in ("mean", "std", "min", "max")}
    counts = np.array([r["count"][0] for r in rows])
    summary = Summary.pooled((3, 1, 1), counts, moments["mean"], moments["std"], moments["min"], moments["max"])
    columns = {f"stats/{key}/{name}": pa.array([r[name] for r in rows]) for name in rows[0]} if rows else {}
    return pa.table(columns), summary.with_histogram(histogram, _LEVELS)
