"""LeRobot merge benchmark: 4 v3.0 datasets (2 cameras, mostly video) merged, against `cp -r` of the inputs.

    python bench/lerobot.py                # ~2 GB and ~8 GB of inputs
    python bench/lerobot.py --scale 0.01   # ~20 MB and ~80 MB, a quick run

Inputs are built from a few encoded episodes repeated (a merge of one small dataset listed many times), under
`bench-data/` (git-ignored), deleted afterwards. Prints medians of 3 repeats, the ratio of the merge wall time
(excluding Ray start-up, reported separately) to the `cp -r` floor on the same disk (both flushed with `sync`),
and the driver's peak RSS at both sizes (it should not grow with the data). Each merge runs in a fresh driver
process, a new Ray job whose workers start cold, as a `raymerge run` does.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from floor import cp_floor, fmt, start_ray

from raymerge import api
from raymerge.lerobot import samples

ROOT = Path("bench-data/lerobot")
DRIVER = """
import json, sys
from raymerge import api
report = api.run(json.loads(sys.argv[1]), address=sys.argv[2])
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec.
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"timings": report.timings, "rss_mb": peak / 1024}))
"""


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build_inputs(total_bytes: float, address: str) -> list[Path]:
    """Four v3.0 datasets of about total_bytes / 4 each, made of copies of one small encoded dataset."""
    base = ROOT / "base"
    if not base.exists():
        samples.make(
            None,
            str(base),
            version="v2.1",
            lengths=(300, 240, 270, 330),
            cameras=2,
            fps=30,
            height=240,
            width=320,
            seed=9,
            grain=16,
        )
    copies = max(1, math.ceil(total_bytes / 4 / tree_bytes(base)))
    inputs = []
    for i in range(4):
        path = ROOT / f"in-{int(total_bytes)}-{i}"
        if not path.exists():
            cfg = {
                "kind": "lerobot",
                "inputs": [{"path": str(base), "name": f"copy{k}"} for k in range(copies)],
                "output": {"path": str(path), "format_version": "v3.0"},
            }
            api.run(cfg, address=address)
        inputs.append(path)
    return inputs


def merge_once(inputs: list[Path], out: Path, address: str) -> dict:
    """One merge in a fresh driver process (a new Ray job: its workers start cold), flushed to disk like
    the `cp -r` floor; `sync_s` is the flush."""
    cfg = {"kind": "lerobot", "inputs": [{"path": str(p)} for p in inputs], "output": {"path": str(out)}}
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(["sync"], check=True)
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(cfg), address], capture_output=True, text=True, check=True
    )
    t0 = time.perf_counter()
    subprocess.run(["sync"], check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1]) | {"sync_s": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 2 GB and 8 GB of inputs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep bench-data/ afterwards")
    args = parser.parse_args()

    import ray

    address, _ = start_ray()
    try:
        for size in (2e9 * args.scale, 8e9 * args.scale):
            inputs = build_inputs(size, address)
            in_bytes = sum(tree_bytes(p) for p in inputs)
            floors, walls, rss = [], [], []
            for _ in range(args.repeats):
                floors.append(cp_floor(inputs, ROOT / "cp"))
                run = merge_once(inputs, ROOT / "merged", address)
                walls.append(run["timings"]["total"] - run["timings"].get("ray_start", 0.0) + run["sync_s"])
                rss.append(run["rss_mb"])
            print(f"  last run phases: {json.dumps({k: round(v, 2) for k, v in run['timings'].items()})}")
            floor, wall = statistics.median(floors), statistics.median(walls)
            print(
                f"inputs {in_bytes / 1e9:.2f} GB: cp -r {floor:.2f}s, merge {wall:.2f}s "
                f"(ratio {wall / floor:.2f}x, {in_bytes / 1e6 / wall:.0f} MB/s), driver peak RSS {np.median(rss):.0f} MB"
                f"  [cp {fmt(floors)}; merge {fmt(walls)}]",
                flush=True,
            )
            if not args.keep:
                for path in [ROOT / "cp", ROOT / "merged", *inputs]:
                    shutil.rmtree(path, ignore_errors=True)
    finally:
        ray.shutdown()
        if not args.keep:
            shutil.rmtree(ROOT, ignore_errors=True)


if __name__ == "__main__":
    main()
