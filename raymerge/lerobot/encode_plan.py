"""`convert_image_to_video` and `reencode_videos`: which cameras they encode, with which encoder settings, the
video features info.json then declares, and the encode jobs: one per output video file (a v2.1 episode's, or a
v3.0 file of the episodes of one output data file), each run as a task.

Everything else is a one-input merge: data files rewritten (less the converted image columns), other cameras
copied, stats carried (or recomputed from the decoded output with `stats: recompute`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from raymerge.errors import InvalidInput
from raymerge.lerobot import formats
from raymerge.lerobot.config import ENCODE_OPERATIONS, Config, DepthOptions, EncodeOptions
from raymerge.lerobot.layout import DataRun, Layout, VideoJob, VideoRun
from raymerge.lerobot.source_meta import Source

if TYPE_CHECKING:
    from raymerge.lerobot.video.encode import EncoderSettings

# LeRobot's depth encoder: 12-bit grey HEVC, lossless.
DEPTH_CODEC, DEPTH_PIX_FMT, DEPTH_OPTIONS = "hevc", "gray12le", {"x265-params": "lossless=1:log-level=error"}


@dataclass
class ImageJob:
    """One output video file of camera `key` made of the images the data runs hold (each run: episodes of one
    source data file), `shape` (height, width, channels) as info.json declares it."""

    key: str
    path: str
    runs: list[DataRun]
    shape: tuple[int, int, int]

    @property
    def episodes(self) -> list[int]:
        """The output episodes the file holds, in order."""
        return [run.first + k for run in self.runs for k in range(len(run.lengths))]


@dataclass(frozen=True)
class Encode:
    """What every encode task of a run shares: the encoder settings for colour and for depth cameras, the
    depth quantization, and the dataset's frame rate."""

    color: EncoderSettings
    depth: EncoderSettings
    depth_options: DepthOptions
    fps: int
    threads: int | None = None  # encoder threads: 1 where every core already runs a task of its own


@dataclass
class Encoding:
    """An output's encode work: the settings, the video cameras re-encoded, and the files made of images."""

    encode: Encode
    reencoded: set[str] = field(default_factory=set)
    image_jobs: list[ImageJob] = field(default_factory=list)
    frames_per_task: int = 1000


def image_shape(feature: dict[str, Any]) -> tuple[int, int, int]:
    """(height, width, channels) of an image feature, whichever order its `names` give (LeRobot writes both)."""
    shape = [int(s) for s in feature.get("shape") or []]
    names = feature.get("names") or []
    if len(shape) == 2:
        return shape[0], shape[1], 1
    if len(shape) != 3:
        raise ValueError(f"shape {shape} is not (height, width, channels)")
    if names and names[0] in ("channel", "channels"):
        return shape[1], shape[2], shape[0]
    return shape[0], shape[1], shape[2]


def _options(cfg: Config) -> EncodeOptions:
    return cfg.encode or EncodeOptions()


def encoded_keys(cfg: Config, src: Source) -> list[str]:
    """The cameras the run encodes: `encode.keys`, or every image feature (convert) or video (re-encode),
    each checked to be one."""
    want = "image" if cfg.operation == "convert_image_to_video" else "video"
    of_kind = [k for k, f in src.features.items() if f.get("dtype") == want]
    keys = _options(cfg).keys
    for key in keys or []:
        if key not in src.features:
            raise InvalidInput(f"encode.keys: input {src.name} has no feature {key!r}")
        if key not in of_kind:
            raise InvalidInput(
                f"encode.keys: {key!r} of input {src.name} is a {src.features[key].get('dtype')} feature, "
                f"not an {want} one ({cfg.operation} takes {', '.join(of_kind) or 'none here'})"
            )
    chosen = keys or of_kind
    if not chosen:
        raise InvalidInput(f"{cfg.operation}: input {src.name} ({src.url}) has no {want} features to encode")
    return list(dict.fromkeys(chosen))


def settings(cfg: Config, src: Source) -> Encode:
    """The run's encoder settings, checked against this PyAV build (depth settings only checked when a depth
    camera is converted)."""
    from raymerge.lerobot.video.encode import EncoderSettings  # PyAV: only for the runs that encode

    opts = _options(cfg)
    color = EncoderSettings.of(
        opts.codec, opts.pix_fmt, crf=opts.crf, gop=opts.gop, preset=opts.preset, fast_decode=opts.fast_decode
    )
    depth = color
    if cfg.operation == "convert_image_to_video" and any(_is_depth(src, k) for k in encoded_keys(cfg, src)):
        depth = EncoderSettings.of(DEPTH_CODEC, DEPTH_PIX_FMT, gop=opts.gop, extra=DEPTH_OPTIONS)
    return Encode(color, depth, opts.depth, int(src.info["fps"]))


def _is_depth(src: Source, key: str) -> bool:
    return image_shape(src.features[key])[2] == 1


def check(cfg: Config, src: Source) -> set[str]:
    """Before anything runs: the cameras, their shapes and the encoder settings; the image columns a
    conversion takes out of the data files (none for other operations)."""
    if cfg.operation not in ENCODE_OPERATIONS:
        return set()
    keys = encoded_keys(cfg, src)
    if cfg.operation == "convert_image_to_video":
        for key in keys:
            try:
                channels = image_shape(src.features[key])[2]
            except ValueError as e:
                raise InvalidInput(f"input {src.name}: image feature {key!r}: {e}") from None
            if channels not in (1, 3):
                raise InvalidInput(
                    f"input {src.name}: image feature {key!r} has {channels} channels; only colour (3) and "
                    "depth (1) images become videos"
                )
            if channels == 1 and cfg.recompute_cameras:
                raise InvalidInput(
                    f"stats: recompute: depth camera {key!r} would get the stats of its decoded 12-bit codes, not "
                    "of its depths; convert it with `stats: carry` (its image stats are kept)"
                )
    settings(cfg, src)
    return set(keys) if cfg.operation == "convert_image_to_video" else set()


def encoder_info(s: EncoderSettings, cfg: Config, depth: bool) -> dict[str, Any]:
    """The `video.*` entries of a feature's `info` that say how its videos were encoded (as LeRobot persists
    them, with the depth quantization of a depth map)."""
    opts = _options(cfg)
    info: dict[str, Any] = {
        "video.codec": s.codec,
        "video.pix_fmt": s.pix_fmt,
        "video.g": s.gop,
        "video.crf": None if depth else opts.crf,
        "video.preset": dict(s.options).get("preset"),
        "video.fast_decode": opts.fast_decode,
    }
    if depth:
        info |= {f"video.{k}": v for k, v in opts.depth.model_dump().items()}
    return info


def video_info(shape: tuple[int, int, int], fps: int, s: EncoderSettings, cfg: Config, depth: bool) -> dict[str, Any]:
    """A converted feature's `info` as LeRobot writes it: the stream's facts, then its encoder settings."""
    height, width, channels = shape
    stream = {
        "video.height": height,
        "video.width": width,
        "video.codec": s.codec,
        "video.pix_fmt": s.pix_fmt,
        "video.is_depth_map": depth,
        "video.fps": fps,
        "video.channels": channels,
        "has_audio": False,
    }
    return stream | encoder_info(s, cfg, depth)


def plan_output(
    cfg: Config, src: Source, layout: Layout, info: dict[str, Any]
) -> tuple[dict[str, Any], Encoding | None]:
    """The output's info with the encoded cameras as video features, and its encode work (None for other
    operations). A conversion's video files follow the data files (the same slots, which the layout gains for
    the converted cameras): a v2.1 episode's, or a v3.0 file's chunk and file index."""
    if cfg.operation not in ENCODE_OPERATIONS:
        return info, None
    keys = encoded_keys(cfg, src)
    encode = settings(cfg, src)
    fps = encode.fps
    if cfg.operation == "reencode_videos":
        features = dict(info["features"])
        for key in keys:  # the stream's facts (and a depth map's quantization) stay; the encoder settings change
            old = features[key].get("info", {})
            features[key] = features[key] | {"info": old | encoder_info(encode.color, cfg, False)}
        return info | {"features": features}, Encoding(encode, set(keys), [], _options(cfg).frames_per_task)
    features = {}
    jobs: list[ImageJob] = []
    for key, feature in src.features.items():
        if key not in keys:
            if key in info["features"]:
                features[key] = info["features"][key]
            continue
        shape = image_shape(feature)
        depth = shape[2] == 1
        features[key] = {
            "dtype": "video",
            "shape": feature["shape"],
            "names": feature.get("names"),
            "info": video_info(shape, fps, encode.depth if depth else encode.color, cfg, depth),
        }
        layout.video_slots[key] = layout.data_slots
        for job in layout.data_jobs:
            slot = tuple(layout.data_slots[job.runs[0].first].tolist())
            jobs.append(ImageJob(key, formats.video_path(layout.version, key, slot), job.runs, shape))
    return info | {"features": features}, Encoding(encode, set(), jobs, _options(cfg).frames_per_task)


def for_executor(encode: Encode, on_ray: bool) -> Encode:
    """The settings as the executor's tasks use them: one encoder thread each on Ray (a task per core), the
    encoder's own threading in this process (one task at a time)."""
    return dataclasses.replace(encode, threads=1) if on_ray else encode


def jobs(encoding: Encoding | None, layout: Layout) -> list[VideoJob | ImageJob]:
    """The output's encode tasks, the most frames first (so that the last ones to finish are short)."""
    if encoding is None:
        return []
    found: list[VideoJob | ImageJob] = [j for j in layout.video_jobs if j.key in encoding.reencoded]
    found += encoding.image_jobs

    def frames(job: VideoJob | ImageJob) -> int:
        episodes = job.episodes if isinstance(job, ImageJob) else [e for r in job.runs for e in r.episodes]
        return int(layout.length[episodes].sum())

    return sorted(found, key=lambda j: -frames(j))


def pieces(job: VideoJob | ImageJob, lengths: np.ndarray, frames_per_task: int) -> list[VideoJob | ImageJob]:
    """The job cut between episodes into pieces of at most `frames_per_task` frames (or one episode), so that
    a long v3.0 file is encoded by many tasks at once; `[job]` when it fits in one. A piece keeps the job's
    path: the caller places it."""
    cut: list[list[Any]] = [[]]
    frames = 0
    for run in job.runs:
        first, n = run.first, len(run.lengths if isinstance(run, DataRun) else run.offsets)
        start = 0
        for k in range(n):
            length = int(lengths[first + k])
            if frames and frames + length > frames_per_task:
                if k > start:
                    cut[-1].append(_run_slice(run, start, k))
                cut.append([])
                frames, start = 0, k
            frames += length
        cut[-1].append(_run_slice(run, start, n))
    if len(cut) == 1:
        return [job]
    return [dataclasses.replace(job, runs=runs) for runs in cut]  # type: ignore[arg-type]


def _run_slice(run: DataRun | VideoRun, i: int, j: int) -> Any:
    """Episodes i..j-1 of a run as a run of their own (the run itself when that is all of it)."""
    if isinstance(run, DataRun):
        if i == 0 and j == len(run.lengths):
            return run
        skipped = int(run.lengths[:i].sum())
        return DataRun(
            run.source, run.path, run.src_episodes[i:j], run.lengths[i:j], run.first + i, run.frame_from + skipped
        )
    if i == 0 and j == len(run.offsets):
        return run
    start = run.start_s + float(run.offsets[i])
    end = run.start_s + float(run.offsets[j - 1] + run.durations[j - 1])
    return VideoRun(
        run.source, run.path, start, end, run.first + i, run.offsets[i:j] - run.offsets[i], run.durations[i:j]
    )


def converted(encoding: Encoding) -> set[str]:
    """The image features the output stores as videos."""
    return {j.key for j in encoding.image_jobs}


def unplaced(encoding: Encoding | None, n_episodes: int) -> dict[str, np.ndarray]:
    """The (from, to) timestamps of the converted cameras, NaN until their files are written."""
    keys = converted(encoding) if encoding is not None else set()
    return {key: np.full((n_episodes, 2), np.nan) for key in sorted(keys)}


def details(encoding: Encoding | None, layout: Layout) -> dict[str, Any]:
    """What the report says of the encodes: files encoded, and copied or remuxed among the other cameras'."""
    if encoding is None:
        return {}
    others = [j for j in layout.video_jobs if j.key not in encoding.reencoded]
    copies = sum(j.is_copy for j in others)
    return {
        "videos_copied": copies,
        "videos_remuxed": len(others) - copies,
        "videos_encoded": len(layout.video_jobs) - len(others) + len(encoding.image_jobs),
        "encoded_cameras": sorted(encoding.reencoded | converted(encoding)),
        "encoder": encoding.encode.color.encoder,
    }
