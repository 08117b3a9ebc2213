"""WebDataset join at scale with small members: raymerge against the `cp` floor and against Megatron-Energon.

Primary: N keys with one ~20-byte member each (`ids`, token ids as bytes); a secondary with a ~20-byte `txt`
for 90% of the keys, in shuffled order. The join runs twice, the secondary with `nonmatch: skip` and with
`nonmatch: none`, each in a fresh driver attached to the running Ray; its wall time (plan + write + commit
+ `sync` of the output) is compared with `cp -r` + `sync` of the same input bytes, measured before and
again after the joins (a virtual disk's speed drifts), and with the join's own I/O timed apart
(`floor.io_floor`: reading the inputs, then writing as many bytes); the busy core-seconds of each run
say how much of the rest is computation. Energon (`--energon`) does what its users do for the same join
(`webdataset_energon.py`): `energon prepare` of each input and of a metadataset that joins them, then
iterating the joined dataset and writing the samples into new shards.

    python bench/webdataset_scale.py --keys 100000 1000000 --energon 1000000   # 10^5 and 10^6, Energon at 10^6
    python bench/webdataset_scale.py --keys 10000000                            # 10^7 (~19.5 GB of tars in)

Results also go to `<workdir>/results.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from floor import cp_floor, fresh_driver, io_floor, start_ray

PER_SHARD = 10_000
MEMBER = 20  # bytes of each member's payload
SECONDARY_SHARE = 0.9


def keys_of(ids: np.ndarray) -> list[str]:
    return [f"part_{'ab'[i % 2]}/{i:09d}" for i in ids.tolist()]


def write_small_tar(path: Path, keys: list[str], ext: str, seed: int) -> None:
    """A plain ustar shard of one `MEMBER`-byte member per key, laid out as WebDataset writers do (header,
    data, padding), built with numpy: 1 KiB per sample."""
    import pyarrow as pa

    from raymerge.webdataset.writer import END_OF_ARCHIVE, member_headers

    n = len(keys)
    names = pa.array([f"{k}.{ext}" for k in keys], pa.large_string())
    headers, bounds = member_headers(names, np.full(n, MEMBER, dtype=np.int64), 0)
    assert (np.diff(bounds) == 512).all()
    body = np.zeros((n, 1024), dtype=np.uint8)
    body[:, :512] = np.frombuffer(headers, dtype=np.uint8).reshape(n, 512)
    body[:, 512 : 512 + MEMBER] = np.random.default_rng(seed).integers(32, 127, size=(n, MEMBER), dtype=np.uint8)
    tail = len(END_OF_ARCHIVE) + (-(n * 1024 + len(END_OF_ARCHIVE)) % 10240)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(body.tobytes())
        f.write(bytes(tail))


def generate(root: Path, n: int) -> int:
    """The primary (`ids`, in key order) and the shuffled secondary (`txt`, 90% of the keys); input bytes."""
    rng = np.random.default_rng(0)
    for s in range(0, n, PER_SHARD):
        ids = np.arange(s, min(n, s + PER_SHARD))
        write_small_tar(root / "primary" / f"shard-{s // PER_SHARD:06d}.tar", keys_of(ids), "ids", s)
    chosen = rng.permutation(n)[: int(n * SECONDARY_SHARE)]
    for s in range(0, len(chosen), PER_SHARD):
        write_small_tar(
            root / "secondary" / f"part-{s // PER_SHARD:06d}.tar", keys_of(chosen[s : s + PER_SHARD]), "txt", n + s
        )
    return sum(p.stat().st_size for p in root.rglob("*.tar"))


def join_config(root: Path, out: Path, nonmatch: str) -> dict:
    return {
        "kind": "webdataset",
        "operation": "join",
        "inputs": [{"path": str(root / "primary")}, {"path": str(root / "secondary"), "nonmatch": nonmatch}],
        "output": {"path": str(out), "maxcount": PER_SHARD},
    }


def raymerge_runs(root: Path, base: Path, modes: list[str], floor: float) -> list[dict]:
    """One join per nonmatch mode, each in a fresh driver attached to the running Ray (`floor.fresh_driver`)."""
    runs = []
    for mode in modes:
        out = base / "out"
        shutil.rmtree(out, ignore_errors=True)
        run = fresh_driver(join_config(root, out, mode), "raymerge.webdataset.tasks", [root])
        shutil.rmtree(out, ignore_errors=True)
        phases = {k: round(v, 2) for k, v in run["timings"].items() if k in ("check", "plan", "write", "commit")}
        print(
            f"  raymerge join, nonmatch {mode}: {run['wall']:.2f}s = {run['wall'] / floor:.2f}x the floor "
            f"(phases {phases}); {run['cpu_s']:.0f} busy core-seconds ({run['cpu_s'] / run['wall']:.2f} cores); "
            f"{run['rows_out']:,} samples out; driver peak RSS {run['rss_mb']:.0f} MB; "
            f"attach {run['attach']:.2f}s and job worker start-up {run['workers']:.2f}s excluded; "
            f"load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        runs.append({"mode": mode, **run})
    return runs


def energon_runs(root: Path, base: Path, modes: list[str]) -> list[dict]:
    """Megatron-Energon doing the same joins (`webdataset_energon.py`, a fresh process each)."""
    runs = []
    for mode in modes:
        out = base / "energon-out"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        script = Path(__file__).with_name("webdataset_energon.py")
        args = [
            sys.executable,
            str(script),
            *(str((root / n).resolve()) for n in ("primary", "secondary")),
            str(out.resolve()),
            mode,
        ]
        done = subprocess.run(args, capture_output=True, text=True, cwd=base)
        wall = time.perf_counter() - t0
        shutil.rmtree(out, ignore_errors=True)
        if done.returncode:
            error = done.stderr.strip().splitlines()[-1][:300] if done.stderr.strip() else f"exit {done.returncode}"
            print(f"  energon prepare + join, nonmatch {mode}: failed after {wall:.1f}s: {error}", flush=True)
            runs.append({"mode": mode, "wall": wall, "error": error})
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        steps = {k: round(v, 1) for k, v in result.items() if k != "samples"}
        print(f"  energon prepare + join, nonmatch {mode}: {wall:.1f}s ({steps}); {result['samples']:,} samples out")
        runs.append({"mode": mode, "wall": wall, **result})
    return runs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, nargs="+", default=[100_000, 1_000_000], help="primary keys, one run each")
    ap.add_argument("--modes", default="skip,none")
    ap.add_argument("--energon", type=int, nargs="*", default=[], help="key counts at which to run Energon too")
    ap.add_argument("--energon-modes", default="skip,none", help="nonmatch modes for Energon (its none fails)")
    ap.add_argument("--keep", action="store_true", help="keep the generated inputs afterwards")
    ap.add_argument("--workdir", default="bench-data/webdataset-scale")
    args = ap.parse_args()
    import ray

    base, modes = Path(args.workdir), args.modes.split(",")
    base.mkdir(parents=True, exist_ok=True)
    os.environ["RAY_ADDRESS"], _ = start_ray()
    results = {}
    try:
        for keys in args.keys:
            root = base / f"k{keys}"
            t0 = time.perf_counter()
            if not (root / "secondary").exists():
                shutil.rmtree(root, ignore_errors=True)
                size = generate(root, keys)
            else:
                size = sum(p.stat().st_size for p in root.rglob("*.tar"))
            print(f"{keys:,} primary keys, {size / 1e9:.2f} GB of tars ({time.perf_counter() - t0:.0f}s to make)")
            inputs = [root / "primary", root / "secondary"]
            floor = cp_floor(inputs, base / "cp")
            print(f"  cp -r + sync of the same bytes: {floor:.2f}s", flush=True)
            results[keys] = {"bytes": size, "floor": floor, "raymerge": raymerge_runs(root, base, modes, floor)}
            # a virtual disk's speed drifts over minutes: the floor again after the joins, each run against both
            again = cp_floor(inputs, base / "cp")
            results[keys]["floor_after"] = again
            ratios = ", ".join(f"{r['mode']} {r['wall'] / again:.2f}x" for r in results[keys]["raymerge"])
            print(f"  cp -r + sync again, after the joins: {again:.2f}s; against it: {ratios}", flush=True)
            read, write = io_floor(inputs, base / "io")
            results[keys]["io"] = {"read": read, "write": write}
            print(
                f"  the join's own I/O apart: reading the inputs {read:.2f}s + writing as many bytes past the page "
                f"cache {write:.2f}s = {read + write:.2f}s ({(read + write) / again:.2f}x the floor after)",
                flush=True,
            )
            if keys in args.energon:
                results[keys]["energon"] = energon_runs(root, base, args.energon_modes.split(","))
            if not args.keep:
                shutil.rmtree(root)
        (base / "results.json").write_text(json.dumps(results, indent=1))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
