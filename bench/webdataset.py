"""WebDataset join benchmark against the physical floor (`cp` of the same input bytes to the same disk).

Primary: N samples of random-byte "images" (~15 KB) + labels; secondaries: captions for ~95% of the keys
in shuffled order, JSON metadata for half the keys. One join with `skip` (captions) and `none` (metadata),
3 repeats, medians; driver peak RSS at 1x and 5x the data. The join is timed from the call to the
output's `sync` (as `cp` is); Ray's start-up and each new job's worker start-up are timed on their own.

    python bench/webdataset.py --scale 0.01        # quick
    python bench/webdataset.py                     # 100k samples (1.8 GB of tars) and 5x (9.2 GB) under bench-data/
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tarfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
from floor import cp_floor, fmt, fresh_driver, start_ray

from raymerge.webdataset import samples as S
from raymerge.webdataset.writer import END_OF_ARCHIVE, member_headers

IMAGE = 15_000
PER_SHARD = 1000


def write_tar(path: Path, samples: Iterable[tuple[str, dict[str, bytes]]]) -> None:
    """A plain ustar shard, written with the output writer's headers (tarfile is too slow for 7.5 GB)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    members = [(f"{key}.{ext}", data) for key, sample in samples for ext, data in sample.items()]
    sizes = np.array([len(data) for _, data in members], dtype=np.int64)
    headers, bounds = member_headers(pa.array([name for name, _ in members], pa.large_string()), sizes, 0)
    pieces, pos = [], 0
    for (_, data), start, end in zip(members, bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        pad = bytes(-len(data) % tarfile.BLOCKSIZE)
        pieces += (headers[start:end], data, pad)
        pos += end - start + len(data) + len(pad)
    pieces += (END_OF_ARCHIVE, bytes(-(pos + len(END_OF_ARCHIVE)) % tarfile.RECORDSIZE))
    path.write_bytes(b"".join(pieces))


def generate(root: Path, n: int) -> int:
    """Writes the three inputs shard by shard (bounded memory); returns the input bytes."""
    keys = [f"part_{'ab'[i % 2]}/{i:08d}" for i in range(n)]
    rng = random.Random(0)
    for s in range(0, n, PER_SHARD):
        block = keys[s : s + PER_SHARD]
        write_tar(
            root / "images" / f"shard-{s // PER_SHARD:06d}.tar",
            ((k, {"jpg": rng.randbytes(IMAGE), "cls": str(i % 10).encode()}) for i, k in enumerate(block)),
        )
    captions = S.shuffled([k for i, k in enumerate(keys) if i % 20 != 3], 1)
    for s in range(0, len(captions), PER_SHARD):
        write_tar(root / "captions" / f"cap-{s // PER_SHARD:06d}.tar", S.caption_samples(captions[s : s + PER_SHARD]))
    meta = S.shuffled(keys[::2], 2)
    for s in range(0, len(meta), PER_SHARD):
        write_tar(root / "meta" / f"meta-{s // PER_SHARD:06d}.tar", S.meta_samples(meta[s : s + PER_SHARD]))
    return sum(p.stat().st_size for p in root.rglob("*.tar"))


def join_once(root: Path, out: Path) -> dict:
    """One join in a fresh driver attached to the running Ray (`floor.fresh_driver`): wall time of the work
    with the `sync` of its output, driver peak RSS; attaching and the job's worker start-up timed apart."""
    cfg = {
        "kind": "webdataset",
        "operation": "join",
        "inputs": [
            {"path": str(root / "images")},
            {"path": str(root / "captions"), "nonmatch": "skip"},
            {"path": str(root / "meta"), "nonmatch": "none"},
        ],
        "output": {"path": str(out), "maxcount": 5000},
    }
    shutil.rmtree(out, ignore_errors=True)
    run = fresh_driver(cfg, "raymerge.webdataset.tasks", [root])
    shutil.rmtree(out, ignore_errors=True)
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of 100k samples")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep bench-data/ afterwards")
    args = ap.parse_args()
    import ray

    os.environ["RAY_ADDRESS"], _ = start_ray()
    base = Path("bench-data/webdataset")
    rows = []
    try:
        for mult in (1, 5):
            n = int(100_000 * args.scale * mult)
            root = base / f"x{mult}"
            shutil.rmtree(root, ignore_errors=True)
            size = generate(root, n)
            floors = [cp_floor([root], base / "cp") for _ in range(args.repeats)]
            runs = [join_once(root, base / "out") for _ in range(args.repeats)]
            work = [r["wall"] for r in runs]  # plan + write + commit + sync of the output
            floor, med = statistics.median(floors), statistics.median(work)
            rss = max(r["rss_mb"] for r in runs)
            plan = statistics.median(r["timings"]["plan"] for r in runs)
            write = statistics.median(r["timings"]["write"] for r in runs)
            workers = statistics.median(r["workers"] for r in runs)
            print(
                f"{mult}x: {n:,} samples, {size / 1e9:.2f} GB in; cp floor {floor:.2f}s (runs {fmt(floors)}); "
                f"join (plan+write+commit+sync) {med:.2f}s (runs {fmt(work)}; plan {plan:.2f}s, write {write:.2f}s) "
                f"= {med / floor:.2f}x floor; per-job worker start-up {workers:.2f}s (runs {fmt([r['workers'] for r in runs])}), "
                f"with it {(med + workers) / floor:.2f}x; attach {statistics.median(r['attach'] for r in runs):.2f}s; "
                f"rows out {runs[0]['rows_out']:,}; driver peak RSS {rss:.0f} MB; load average {os.getloadavg()[0]:.1f}"
            )
            rows.append((mult, n, size, floor, med, rss))
            if not args.keep:
                shutil.rmtree(root)
        print(f"driver RSS 5x / 1x: {rows[1][5] / rows[0][5]:.2f}")
    finally:
        ray.shutdown()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
