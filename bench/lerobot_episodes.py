"""LeRobot driver memory against the number of episodes: merges of many tiny episodes (16×16 video).

    python bench/lerobot_episodes.py                  # 3,200 and 25,600 episodes
    python bench/lerobot_episodes.py --copies 100 400 1600

Each input is a v3.0 merge of copies of one 8-episode dataset; four inputs are merged in a fresh driver
attached to the running Ray (as `bench/lerobot.py` does). The payload is negligible, so what grows is what
the driver holds per episode: the plan, the placements, the metadata written. Prints the driver's peak RSS
at each size and its growth per added episode. Data goes to `bench-data/` (git-ignored), deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from floor import fresh_driver, start_ray
from lerobot import merged_copies, rss_growth

from raymerge.lerobot import samples

ROOT = Path("bench-data/lerobot-episodes")


def build_inputs(copies: int, address: str) -> list[Path]:
    base = ROOT / "base"
    if not base.exists():
        samples.make(None, str(base), version="v2.1", lengths=(20,) * 8, fps=30, height=16, width=16, seed=9)
    return merged_copies(base, copies, ROOT / f"in-{copies}", address)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, nargs="+", default=[100, 800], help="copies of 8 episodes per input")
    parser.add_argument("--keep", action="store_true", help="keep bench-data/ afterwards")
    args = parser.parse_args()

    import ray

    address, _ = start_ray()
    os.environ["RAY_ADDRESS"] = address
    peaks = []
    try:
        for copies in args.copies:
            inputs = build_inputs(copies, address)
            out = ROOT / "merged"
            cfg = {"kind": "lerobot", "inputs": [{"path": str(p)} for p in inputs], "output": {"path": str(out)}}
            shutil.rmtree(out, ignore_errors=True)
            run = fresh_driver(cfg, "raymerge.lerobot.tasks", inputs)
            shutil.rmtree(out)
            peaks.append((run["episodes"], run["rss_mb"]))
            print(
                f"{run['episodes']:,} episodes: driver peak RSS {run['rss_mb']:.0f} MB, merge {run['wall']:.2f}s "
                f"(plan {run['timings']['plan']:.2f}s, write {run['timings']['write']:.2f}s)",
                flush=True,
            )
        print(rss_growth(peaks[0], peaks[-1]), flush=True)
    finally:
        ray.shutdown()
        if not args.keep:
            shutil.rmtree(ROOT, ignore_errors=True)


if __name__ == "__main__":
    main()
