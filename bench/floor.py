"""What every benchmark shares: one Ray for the whole run and the physical floor it is measured against."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def start_ray() -> tuple[str, float]:
    """Start the run's Ray once; its start-up is fixed cost, reported apart from the work. Returns (address, s)."""
    import ray

    t0 = time.perf_counter()
    ctx = ray.init(include_dashboard=False, logging_level="ERROR")
    took = time.perf_counter() - t0
    print(f"ray start-up (fixed, excluded below): {took:.2f}s", flush=True)
    return ctx.address_info["gcs_address"], took


DRIVER = """
import json, os, subprocess, sys, time
import ray
from raymerge import api
cfg, warm_module = json.loads(sys.argv[1]), sys.argv[2]

def cpu():  # the machine's busy core-seconds so far: user, nice, system, irq, softirq
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:8]]
    return (sum(fields[:3]) + sum(fields[5:7])) / os.sysconf("SC_CLK_TCK")

t0 = time.perf_counter()
ray.init(logging_level="ERROR")
attach = time.perf_counter() - t0

@ray.remote
def warm():
    __import__(warm_module)
    time.sleep(0.5)  # so each core's worker takes one

t0 = time.perf_counter()
ray.get([warm.remote() for _ in range(int(ray.cluster_resources()["CPU"]))])
workers = time.perf_counter() - t0 - 0.5
t0, c0 = time.perf_counter(), cpu()
report = api.run(cfg)
subprocess.run(["sync"], check=True)
wall, cpu_s = time.perf_counter() - t0, cpu() - c0
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec.
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"wall": wall, "cpu_s": cpu_s, "attach": attach, "workers": workers, "timings": report.timings,
                  "rows_out": report.rows_out, "episodes": report.details.get("episodes"), "rss_mb": peak / 1024}))
"""


def fresh_driver(cfg: dict, warm_module: str, warm_paths: Sequence[Path]) -> dict:
    """One run in a fresh driver process attached to the running Ray (`RAY_ADDRESS`), as a submitted job runs,
    its inputs (`warm_paths`) in the page cache as for the `cp` floor.

    Attaching and the new job's worker start-up (one worker per core importing `warm_module`) are Ray's
    fixed per-job costs, timed apart; `wall` is the run plus the `sync` of its output (as the `cp` floor),
    `cpu_s` the busy core-seconds of the whole machine meanwhile (every process: Ray's too).
    """
    subprocess.run(["sync"], check=True)
    warm(warm_paths)
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(cfg), warm_module], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def warm(paths: Sequence[Path]) -> None:
    """Read every file under `paths` once, so that the floor and the run both start with their inputs in
    the page cache (whichever ran last would otherwise find them there, or evicted by the other's output)."""
    for root in paths:
        for path in sorted(Path(root).rglob("*")):
            if path.is_file():
                with open(path, "rb") as f:
                    while f.read(16 * 1024 * 1024):
                        pass


def cp_floor(sources: Sequence[Path], dest: Path) -> float:
    """`cp -r` of the same input bytes to the same disk, flushed with `sync` (as the runs measured against it)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    subprocess.run(["sync"], check=True)
    warm(sources)
    t0 = time.perf_counter()
    subprocess.run(["cp", "-r", *map(str, sources), str(dest)], check=True)
    subprocess.run(["sync"], check=True)
    took = time.perf_counter() - t0
    shutil.rmtree(dest)
    return took


def io_floor(sources: Sequence[Path], dest: Path, file_bytes: int = 24 << 20) -> tuple[float, float]:
    """The I/O of a run that reads every input before it writes (a join), timed apart: (read, write) seconds.

    Reading is every input file read once, cached as far as `warm` leaves them (as for the runs); writing
    is as many bytes in `file_bytes` files past the page cache (`O_DIRECT`, as raymerge's writers do), then
    `sync`. What is left of a run's time beyond their sum is computation.
    """
    from raymerge.directio import DirectFile

    subprocess.run(["sync"], check=True)
    warm(sources)
    t0 = time.perf_counter()
    warm(sources)
    read = time.perf_counter() - t0
    total = sum(p.stat().st_size for root in sources for p in Path(root).rglob("*") if p.is_file())
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    block = os.urandom(8 << 20)
    t0 = time.perf_counter()
    written, n = 0, 0
    while written < total:
        with DirectFile(str(dest / f"{n:06d}")) as f:
            for _ in range(max(1, file_bytes // len(block))):
                f.write(block)
                written += len(block)
        n += 1
    subprocess.run(["sync"], check=True)
    write = time.perf_counter() - t0
    shutil.rmtree(dest)
    return read, write


def fmt(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)
