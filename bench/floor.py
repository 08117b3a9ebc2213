"""What every benchmark shares: one Ray for the whole run and the physical floor it is measured against."""

from __future__ import annotations

import shutil
import subprocess
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


def cp_floor(sources: Sequence[Path], dest: Path) -> float:
    """`cp -r` of the same input bytes to the same disk, flushed with `sync` (as the runs measured against it)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    subprocess.run(["sync"], check=True)
    t0 = time.perf_counter()
    subprocess.run(["cp", "-r", *map(str, sources), str(dest)], check=True)
    subprocess.run(["sync"], check=True)
    took = time.perf_counter() - t0
    shutil.rmtree(dest)
    return took


def fmt(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)
