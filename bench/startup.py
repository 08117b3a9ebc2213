"""End to end as a user feels it, start-up included: a tiny config, and a ~0.5 GB LeRobot merge.

Each case runs `raymerge run` in a fresh process, as a user types it, three ways: `--executor auto` (the
default: this process for small inputs), `--executor in-process` and `--executor ray` (Ray starts in the
process). Side by side: the `cp -r` floor of the same input bytes, and for LeRobot a single-process copy in
the style of LeRobot's `aggregate_datasets` (every data file read, its indices shifted, written again; every
video file copied whole), which is what a user of LeRobot's own merge waits for at best.

    python bench/startup.py [--lerobot-bytes 5e8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from floor import cp_floor, fmt, warm

ROOT = Path("bench-data/startup")


def timed_cli(config: Path, out: Path, executor: str) -> float:
    """Wall time of `raymerge run CONFIG --executor E` in a new process, plus the `sync` of its output."""
    shutil.rmtree(out, ignore_errors=True)
    out.unlink(missing_ok=True) if out.suffix else None
    exe = Path(sys.executable).with_name("raymerge")
    t0 = time.perf_counter()
    subprocess.run(
        [str(exe), "run", str(config), "--quiet", "--executor", executor, "--set", f"output.path={out}"],
        check=True,
        capture_output=True,
        env={k: v for k, v in __import__("os").environ.items() if k not in ("RAY_ADDRESS", "RAYMERGE_EXECUTOR")},
    )
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - t0


def aggregate_style(inputs: list[Path], out: Path) -> float:
    """One process, one file after another: data parquet re-indexed and rewritten, videos copied whole."""
    code = """
import json, shutil, sys, time
from pathlib import Path
import pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq
inputs, out = [Path(p) for p in json.loads(sys.argv[1])], Path(sys.argv[2])
episode = frame = 0
for n, src in enumerate(inputs):
    eps = frames = 0
    for f in sorted((src / "data").rglob("*.parquet")):
        t = pq.read_table(f)
        for name, shift in (("episode_index", episode), ("index", frame)):
            t = t.set_column(t.schema.get_field_index(name), name, pc.add(t[name], shift))
        dest = out / "data" / f"src-{n}" / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, dest)
        eps = max(eps, pc.max(t["episode_index"]).as_py() + 1 - episode)
        frames += t.num_rows
    for v in sorted((src / "videos").rglob("*.mp4")):
        dest = out / "videos" / f"src-{n}" / v.relative_to(src / "videos")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(v, dest)
    episode, frame = episode + eps, frame + frames
"""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, json.dumps([str(p) for p in inputs]), str(out)], check=True)
    subprocess.run(["sync"], check=True)
    took = time.perf_counter() - t0
    shutil.rmtree(out)
    return took


def tiny_text(root: Path) -> Path:
    from raymerge.text.samples import pairs, write_jsonl

    a = write_jsonl(root / "tiny-a.jsonl", pairs("a", 50))
    b = write_jsonl(root / "tiny-b.jsonl", pairs("b", 50))
    config = root / "tiny.yaml"
    config.write_text(
        json.dumps(
            {
                "kind": "text",
                "operation": "interleave",
                "inputs": [{"path": str(a)}, {"path": str(b)}],
                "output": {"path": str(root / "tiny-out.jsonl")},
            }
        )
    )
    return config


def lerobot_inputs(root: Path, total_bytes: float) -> tuple[Path, list[Path]]:
    import lerobot as lerobot_bench  # bench/lerobot.py: the same inputs as the LeRobot bench

    inputs = lerobot_bench.build_inputs(total_bytes, None)
    config = root / "lerobot.yaml"
    config.write_text(
        json.dumps(
            {"kind": "lerobot", "inputs": [{"path": str(p)} for p in inputs], "output": {"path": str(root / "o")}}
        )
    )
    return config, inputs


def report(label: str, walls: dict[str, list[float]], floor: float | None) -> None:
    parts = []
    for name, values in walls.items():
        median = statistics.median(values)
        ratio = f" ({median / floor:.2f}x cp)" if floor else ""
        parts.append(f"{name} {median:.2f}s{ratio} [{fmt(values)}]")
    print(f"{label}: " + "; ".join(parts), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lerobot-bytes", type=float, default=5e8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ROOT.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(dir=ROOT))
    try:
        config = tiny_text(root)
        walls: dict[str, list[float]] = {m: [] for m in ("auto", "in-process", "ray")}
        for _ in range(args.repeats):
            for mode in walls:
                walls[mode].append(timed_cli(config, root / "tiny-out.jsonl", mode))
        report("tiny text interleave (2 x 50 pairs), end to end", walls, None)

        config, inputs = lerobot_inputs(root, args.lerobot_bytes)
        in_bytes = sum(p.stat().st_size for d in inputs for p in d.rglob("*") if p.is_file())
        walls = {m: [] for m in ("auto", "in-process", "ray")} | {"aggregate-style": [], "cp -r": []}
        for _ in range(args.repeats):
            walls["cp -r"].append(cp_floor(inputs, root / "cp"))
            warm(inputs)
            walls["aggregate-style"].append(aggregate_style(inputs, root / "agg"))
            for mode in ("auto", "in-process", "ray"):
                warm(inputs)
                walls[mode].append(timed_cli(config, root / "o", mode))
        floor = statistics.median(walls["cp -r"])
        report(f"LeRobot merge of {in_bytes / 1e9:.2f} GB (4 v3.0 inputs), end to end", walls, floor)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
