"""LeRobot encode benchmark: `convert_image_to_video` and `reencode_videos` of a few hundred small episodes,
raymerge on every core against the same encodes one episode after another in one process (what LeRobot's
`lerobot-edit-dataset` does: a plain PyAV loop here).

    python bench/lerobot_encode.py                   # 300 episodes of 20 frames, 96x128
    python bench/lerobot_encode.py --episodes 200 --frames 30 --size 192 256   # heavier encodes
    python bench/lerobot_encode.py --episodes 60     # a quick run
    python bench/lerobot_encode.py --version v3.0    # one data file: pieces of `encode.frames_per_task` frames

The input is a v2.1 dataset whose camera is stored as PNG images in the data files (one encode task per
episode), or with `--version v3.0` one whose episodes share a data file (one encode task per piece of
`--frames-per-task` frames of whole episodes, joined by packet copy; the loop encodes each file whole, as
LeRobot does). raymerge runs in a fresh driver attached to a running Ray (a new job; the job's worker start-up is
timed apart) and writes a whole dataset (data files without the images, metadata, stats); the loop only
decodes and encodes the videos, with the same encoder settings. Both are flushed with `sync`. Prints medians
of the repeats, the speed-up and the speed-up per core, and the load average (the machine may be shared).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
from floor import fmt, fresh_driver, start_ray

from raymerge.lerobot import samples

CAMERA = "observation.images.img0"
# LeRobot's defaults for convert_image_to_video; a codec change for reencode_videos.
CONVERT = {"codec": "av1", "crf": 30, "gop": 2, "pix_fmt": "yuv420p"}
REENCODE = {"codec": "h264", "crf": 23, "gop": 10, "pix_fmt": "yuv420p"}
ENCODERS = {"av1": ("libsvtav1", {"crf": "30", "preset": "12"}), "h264": ("libx264", {"crf": "23"})}


def encode_loop(frames: list[np.ndarray], fps: int, path: Path, settings: dict) -> None:
    """One episode's frames to an mp4 with PyAV, as LeRobot's `encode_video_frames` does."""
    encoder, options = ENCODERS[settings["codec"]]
    with av.open(str(path), "w") as out:
        stream = out.add_stream(encoder, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], settings["pix_fmt"]
        stream.codec_context.gop_size = settings["gop"]
        stream.codec_context.options = options
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode(None))


def sequential_convert(src: Path, out: Path, fps: int) -> float:
    """Every episode's PNG images decoded and encoded, one episode after another."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    for path in sorted((src / "data").rglob("*.parquet")):
        blobs = pq.read_table(path, columns=[CAMERA])[CAMERA].combine_chunks().field("bytes").to_pylist()
        frames = [next(av.open(io.BytesIO(b)).decode(video=0)).to_ndarray(format="rgb24") for b in blobs]
        dest = out / path.relative_to(src / "data").with_suffix(".mp4")
        dest.parent.mkdir(parents=True, exist_ok=True)
        encode_loop(frames, fps, dest, CONVERT)
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - t0


def sequential_reencode(src: Path, out: Path, fps: int) -> float:
    """Every episode's mp4 decoded and encoded with the new settings, one episode after another."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    for path in sorted((src / "videos").rglob("*.mp4")):
        with av.open(str(path)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        dest = out / path.relative_to(src / "videos")
        dest.parent.mkdir(parents=True, exist_ok=True)
        encode_loop(frames, fps, dest, REENCODE)
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - t0


def raymerge_run(operation: str, src: Path, out: Path, encode: dict) -> dict:
    """One run in a fresh driver attached to the running Ray."""
    shutil.rmtree(out, ignore_errors=True)
    cfg = {
        "kind": "lerobot",
        "operation": operation,
        "inputs": [{"path": str(src)}],
        "encode": encode,
        "output": {"path": str(out)},
    }
    return fresh_driver(cfg, "raymerge.lerobot.video.transcode", [src])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--frames", type=int, default=20, help="frames per episode")
    parser.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--version", choices=("v2.1", "v3.0"), default="v2.1")
    parser.add_argument("--frames-per-task", type=int, default=1000, help="v3.0: frames per encode task")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("bench-data/lerobot-encode"))
    parser.add_argument("--keep", action="store_true", help="keep the work folder afterwards")
    args = parser.parse_args()
    root = args.workdir

    import ray

    fps = 30
    height, width = args.size
    src = root / f"images-{args.version}-{args.episodes}x{args.frames}-{height}x{width}"
    if not src.exists():
        samples.make(
            None,
            str(src),
            version=args.version,
            lengths=(args.frames,) * args.episodes,
            cameras=0,
            fps=fps,
            height=height,
            width=width,
            seed=3,
            image_cameras=1,
        )
    address, _ = start_ray()
    os.environ["RAY_ADDRESS"] = address
    cores = int(ray.cluster_resources()["CPU"])
    videos = root / "videos"
    shutil.rmtree(videos, ignore_errors=True)
    try:
        for operation, encode, loop, source in (
            ("convert_image_to_video", CONVERT, sequential_convert, src),
            ("reencode_videos", REENCODE, sequential_reencode, videos),
        ):
            encode = encode | {"frames_per_task": args.frames_per_task}
            runs, loops = [], []
            for _ in range(args.repeats):
                loops.append(loop(source, root / "loop", fps))
                runs.append(raymerge_run(operation, source, root / "out", encode))
                if operation == "convert_image_to_video" and not videos.exists():
                    shutil.copytree(root / "out", videos)
            wall, one = statistics.median(r["wall"] for r in runs), statistics.median(loops)
            workers = statistics.median(r["workers"] for r in runs)
            print(
                f"{operation} ({args.version}): {args.episodes} episodes x {args.frames} frames of {height}x{width} ({encode['codec']}): one process, "
                f"episode after episode {one:.2f}s; raymerge on {cores} cores {wall:.2f}s (job worker start-up "
                f"{workers:.2f}s apart): {one / wall:.2f}x faster, {one / wall / cores:.2f}x per core; "
                f"load average {os.getloadavg()[0]:.1f}  [loop {fmt(loops)}; raymerge {fmt([r['wall'] for r in runs])}]",
                flush=True,
            )
    finally:
        ray.shutdown()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
