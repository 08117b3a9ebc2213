"""LeRobot merge benchmark: 4 v3.0 datasets (2 cameras, mostly video) merged, against `cp -r` of the inputs.

    python bench/lerobot.py                # ~2 GB and ~8 GB of inputs
    python bench/lerobot.py --scale 0.01   # ~20 MB and ~80 MB, a quick run

Inputs are built from a few encoded episodes repeated (a merge of one small dataset listed many times), under
`bench-data/` (git-ignored), deleted afterwards. Prints medians of 3 repeats, the ratio of the merge wall time
to the `cp -r` floor on the same disk (both flushed with `sync`), and the driver's peak RSS at both sizes (it
should not grow with the data). Each merge runs in a fresh driver process attached to the running Ray, a new
job; Ray's start-up and the job's worker start-up are fixed costs, timed and printed apart from the merge.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
from pathlib import Path

import numpy as np
from floor import cp_floor, fmt, fresh_driver, start_ray

from raymerge import api
from raymerge.lerobot import samples

ROOT = Path("bench-data/lerobot")


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
    return merged_copies(base, copies, ROOT / f"in-{int(total_bytes)}", address)


def merged_copies(base: Path, copies: int, prefix: Path, address: str) -> list[Path]:
    """Four v3.0 datasets `<prefix>-<i>`, each a merge of `copies` copies of `base` (kept if already built)."""
    inputs = []
    for i in range(4):
        path = prefix.with_name(f"{prefix.name}-{i}")
        if not path.exists():
            cfg = {
                "kind": "lerobot",
                "inputs": [{"path": str(base), "name": f"copy{k}"} for k in range(copies)],
                "output": {"path": str(path), "format_version": "v3.0"},
            }
            api.run(cfg, address=address)
        inputs.append(path)
    return inputs


def rss_growth(small: tuple[int, float], large: tuple[int, float]) -> str:
    """The driver's peak RSS at two (episodes, MB) points: ratio and growth per added episode."""
    (n_small, rss_small), (n_large, rss_large) = small, large
    per_episode = (rss_large - rss_small) * 1024 / max(n_large - n_small, 1)
    return (
        f"driver peak RSS {rss_small:.0f} -> {rss_large:.0f} MB for {n_small:,} -> {n_large:,} episodes: "
        f"{rss_large / rss_small:.2f}x, {per_episode:.2f} KB per added episode"
    )


def merge_once(inputs: list[Path], out: Path) -> dict:
    cfg = {"kind": "lerobot", "inputs": [{"path": str(p)} for p in inputs], "output": {"path": str(out)}}
    shutil.rmtree(out, ignore_errors=True)
    run = fresh_driver(cfg, "raymerge.lerobot.tasks", inputs)
    shutil.rmtree(out)  # as the floor's copy is: neither run starts next to the other's output
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 2 GB and 8 GB of inputs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep bench-data/ afterwards")
    args = parser.parse_args()

    import ray

    address, _ = start_ray()
    os.environ["RAY_ADDRESS"] = address
    peaks = []  # (episodes, driver peak RSS in MB) per size
    try:
        for size in (2e9 * args.scale, 8e9 * args.scale):
            inputs = build_inputs(size, address)
            in_bytes = sum(tree_bytes(p) for p in inputs)
            floors, runs = [], []
            for _ in range(args.repeats):
                floors.append(cp_floor(inputs, ROOT / "cp"))
                runs.append(merge_once(inputs, ROOT / "merged"))
            walls = [r["wall"] for r in runs]  # plan + write + commit + sync of the output
            floor, wall = statistics.median(floors), statistics.median(walls)
            workers = statistics.median(r["workers"] for r in runs)
            phases = {k: round(statistics.median(r["timings"][k] for r in runs), 2) for k in ("plan", "write")}
            print(
                f"inputs {in_bytes / 1e9:.2f} GB, {runs[0]['rows_out']:,} frames: cp -r {floor:.2f}s, merge {wall:.2f}s "
                f"(ratio {wall / floor:.2f}x, {in_bytes / 1e6 / wall:.0f} MB/s; {phases}); per-job worker start-up "
                f"{workers:.2f}s, with it {(wall + workers) / floor:.2f}x; driver peak RSS "
                f"{np.median([r['rss_mb'] for r in runs]):.0f} MB; load average {os.getloadavg()[0]:.1f}"
                f"  [cp {fmt(floors)}; merge {fmt(walls)}]",
                flush=True,
            )
            peaks.append((runs[0]["episodes"], float(np.median([r["rss_mb"] for r in runs]))))
            if not args.keep:
                for path in [ROOT / "cp", ROOT / "merged", *inputs]:
                    shutil.rmtree(path, ignore_errors=True)
        print(rss_growth(peaks[0], peaks[-1]), flush=True)
    finally:
        ray.shutdown()
        if not args.keep:
            shutil.rmtree(ROOT, ignore_errors=True)


if __name__ == "__main__":
    main()
