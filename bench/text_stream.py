"""A text merge many times larger than Ray's object store: time, driver peak RSS and object-store peak.

Sources: a JSONL file and a parquet file of ~1 KB pairs, with every 97th output empty (dropped by
normalisation, so counting must normalise). Operation: interleave with probabilities and a seed -> JSONL.
Ray: a head of the bench's own for each run with `--object-store-memory` (256 MB by default; the data is >= 10x
that), which the run attaches to (its workers then import the run's own code). Runs, one at a time on the
same data:

- raymerge (this tree): counting pass, HF order from counts, gather-and-write streamed on Ray Data;
- today's design (`--old DIR`: a checkout of the previous commit, e.g. `git archive HEAD`), which keeps every
  normalised row in the object store from the scan to the write (and so spills);
- Hugging Face `datasets` (load, filter the empty outputs, interleave_datasets, to_json), unless `--skip-hf`.

Checks: raymerge's output is HF's order, row by row, from the order computed from the known counts (every row
names its source and row); the other outputs are byte-identical to it. `--small-rows` runs the same check
against `datasets` itself on a smaller case first. Driver RSS is sampled every 0.2 s (peak, and its value at
each quarter of the run, to show it flat); the object store's bytes in use every 0.5 s from the raylet.

    python bench/text_stream.py [--rows 2800000] [--small-rows 150000] [--object-store-mb 256]
        [--old /tmp/old-checkout] [--skip-hf] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from raymerge.ordering import hf_indices, interleave_order

PROBABILITIES = [0.55, 0.45]
SEED = 7
STRATEGY = "first_exhausted"
DROP_EVERY, DROP_AT = 97, 5  # output i is empty when i % 97 == 5
TEXT_BYTES = 480  # hex characters per side
BATCH = 50_000


def _batch(prefix: str, start: int, n: int) -> pa.Table:
    """Rows [start, start + n): input `<prefix><row:09d> <hex>`, output `<hex>` (empty every 97th row)."""
    raw = np.frombuffer(os.urandom(n * TEXT_BYTES), np.uint8).reshape(n, TEXT_BYTES)
    hexed = [r.tobytes().hex() for r in raw]  # 2 * TEXT_BYTES characters
    ids = np.arange(start, start + n)
    inputs = [f"{prefix}{i:09d} {h[:TEXT_BYTES]}" for i, h in zip(ids, hexed, strict=True)]
    outputs = ["" if i % DROP_EVERY == DROP_AT else h[TEXT_BYTES:] for i, h in zip(ids, hexed, strict=True)]
    return pa.table({"input": inputs, "output": outputs})


def write_sources(root: Path, rows: int) -> list[Path]:
    """`rows` pairs split evenly: a.jsonl and b.parquet (row groups of 65,536)."""
    root.mkdir(parents=True, exist_ok=True)
    each = rows // 2
    jsonl, parquet = root / "a.jsonl", root / "b.parquet"
    with jsonl.open("wb") as f:
        for start in range(0, each, BATCH):
            pl.DataFrame(_batch("a", start, min(BATCH, each - start))).write_ndjson(f)
    schema = pa.schema([("input", pa.string()), ("output", pa.string())])
    with pq.ParquetWriter(parquet, schema, compression="zstd") as w:
        for start in range(0, each, BATCH):
            w.write_table(_batch("b", start, min(BATCH, each - start)), row_group_size=65_536)
    return [jsonl, parquet]


def expected_ids(rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(source, row) of every output row in HF's order, from the counts the drops leave."""
    each = rows // 2
    kept = np.flatnonzero(np.arange(each) % DROP_EVERY != DROP_AT)
    lengths = [len(kept), len(kept)]
    order = interleave_order(lengths, PROBABILITIES, SEED, STRATEGY, ["a", "b"])
    idx = hf_indices(order, lengths)
    return order.astype(np.int64), kept[idx - np.asarray([0, len(kept)])[order]]


def check_order(out: Path, rows: int) -> int:
    """Every output line is the expected (source, row); returns the rows checked."""
    sources, ids = expected_ids(rows)
    n = 0
    with out.open("rb") as f:
        for n, line in enumerate(f):
            tag = line[10:20]  # {"input":"a000000123 ...
            src, row = tag[:1], int(tag[1:])
            if n >= len(ids) or src != b"ab"[sources[n] : sources[n] + 1] or row != ids[n]:
                raise SystemExit(f"{out}: row {n} is {tag!r}, expected {'ab'[sources[n]]}{ids[n]:09d}")
    if n + 1 != len(ids):
        raise SystemExit(f"{out}: {n + 1} rows, expected {len(ids)}")
    return n + 1


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Measured:
    wall: float = 0.0
    rss_peak: int = 0
    rss: list[int] = field(default_factory=list)
    store_peak: int = 0
    spilled: int = 0


class Head:
    """A Ray head of the bench's own (stopped by its own process), and its object store's figures."""

    def __init__(self, temp: Path, object_store_mb: int, env: dict[str, str]) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        ray = Path(sys.executable).with_name("ray")
        args = [str(ray), "start", "--head", "--block", f"--port={port}", "--num-cpus=2"]
        args += [f"--object-store-memory={object_store_mb << 20}", f"--temp-dir={temp}", "--include-dashboard=false"]
        self.proc = subprocess.Popen(
            args, env=env, cwd=_tree(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        from ray._private.internal_api import get_state_from_address

        deadline = time.monotonic() + 120
        while True:
            try:
                self.state = get_state_from_address(self.address)
                self.store()
                break
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise
                time.sleep(1)

    def store(self) -> tuple[int, int]:
        """(bytes in use, bytes spilled so far)."""
        from ray._private.internal_api import get_memory_info_reply

        stats = get_memory_info_reply(self.state).store_stats
        return int(stats.object_store_bytes_used), int(stats.spilled_bytes_total)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def _tree(env: dict[str, str]) -> str | None:
    """Where a run's code is (the `--old` checkout on its PYTHONPATH): its driver and its head's workers start
    there, so that Ray's workers import the same code as the driver."""
    return env.get("PYTHONPATH")


def measure(cmd: list[str], env: dict[str, str], head: Head | None) -> Measured:
    """Run `cmd`, sampling its RSS (and its children's: none for a driver attached to a running head)."""
    m = Measured()
    spilled0 = head.store()[1] if head else 0
    done = threading.Event()

    def watch_store() -> None:
        while head and not done.wait(0.5):
            try:
                used, _ = head.store()
                m.store_peak = max(m.store_peak, used)
            except Exception:  # a slow reply: take the next
                continue

    watcher = threading.Thread(target=watch_store, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=_tree(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p = psutil.Process(proc.pid)
    samples: list[tuple[float, int]] = []
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            samples.append((time.perf_counter() - t0, p.memory_info().rss))
        time.sleep(0.2)
    m.wall = time.perf_counter() - t0
    done.set()
    watcher.join()
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err.decode()[-3000:]}")
    if head:
        m.spilled = head.store()[1] - spilled0
    m.rss_peak = max((r for _, r in samples), default=0)
    m.rss = [max((r for t, r in samples if t <= m.wall * q), default=0) for q in (0.25, 0.5, 0.75, 1.0)]
    return m


def raymerge_cmd(sources: list[Path], out: Path, address: str) -> list[str]:
    cfg = {
        "kind": "text",
        "operation": "interleave",
        "interleave": {"probabilities": PROBABILITIES, "seed": SEED, "stopping_strategy": STRATEGY},
        "inputs": [{"path": str(p)} for p in sources],
        "output": {"path": str(out), "overwrite": True},
        "ray": {"executor": "ray"},
    }
    config = out.with_suffix(".yaml")
    config.write_text(yaml.safe_dump(cfg))
    exe = Path(sys.executable).with_name("raymerge")
    return [str(exe), "run", str(config), "--json", "--quiet", "--address", address]


def hf_merge(jsonl: str, parquet: str, out: str, cache: str) -> None:
    """What a `datasets` user runs: load both, drop the empty pairs, interleave, write JSON lines."""
    from datasets import interleave_datasets, load_dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    sets = [
        load_dataset("json", data_files=jsonl, split="train", cache_dir=cache),
        load_dataset("parquet", data_files=parquet, split="train", cache_dir=cache),
    ]
    sets = [d.filter(lambda b: [bool(x) for x in b["output"]], batched=True) for d in sets]
    sets = [d if d.features == sets[1].features else d.cast(sets[1].features) for d in sets]
    merged = interleave_datasets(sets, probabilities=PROBABILITIES, seed=SEED, stopping_strategy=STRATEGY)
    merged.to_json(out, force_ascii=False)


def run_case(name: str, work: Path, rows: int, args: argparse.Namespace, compare_hf: bool) -> dict[str, Measured]:
    src = work / f"{name}-src"
    t0 = time.perf_counter()
    sources = write_sources(src, rows)
    size = sum(p.stat().st_size for p in sources)
    print(f"{name}: {rows:,} pairs, {size / 1e9:.2f} GB of JSONL + parquet made in {time.perf_counter() - t0:.0f}s")
    env = dict(os.environ)
    results: dict[str, Measured] = {}
    out = work / f"{name}-raymerge.jsonl"
    results["raymerge"] = attached(sources, out, env, work, args.object_store_mb)
    checked = check_order(out, rows)
    reference = digest(out)
    out.unlink()
    print(f"  raymerge: {checked:,} rows in HF's order (from the counts)")
    if args.old:
        old = work / f"{name}-old.jsonl"
        old_env = {**env, "PYTHONPATH": str(args.old)}
        results["today's design (scan holds rows)"] = attached(sources, old, old_env, work, args.object_store_mb)
        same = digest(old) == reference
        old.unlink()
        print(f"  today's design: identical bytes {same}")
        if not same:
            raise SystemExit("today's design wrote other bytes")
    if compare_hf:
        hf, cache = work / f"{name}-hf.jsonl", work / f"{name}-hf-cache"
        cmd = [sys.executable, __file__, "hf", str(sources[0]), str(sources[1]), str(hf), str(cache)]
        results["datasets"] = measure(cmd, env, None)
        same = digest(hf) == reference
        hf.unlink()
        shutil.rmtree(cache, ignore_errors=True)
        print(f"  datasets: identical bytes {same}")
        if not same:
            raise SystemExit("datasets wrote other bytes")
    shutil.rmtree(src)
    return results


def attached(sources: list[Path], out: Path, env: dict[str, str], work: Path, object_store_mb: int) -> Measured:
    """A raymerge run attached to a head of its own, started with the run's environment."""
    head = Head(work / "ray", object_store_mb, env)
    try:
        return measure(raymerge_cmd(sources, out, head.address), env, head)
    finally:
        head.stop()


def show(name: str, results: dict[str, Measured], object_store_mb: int) -> None:
    print(f"\n{name} (object store {object_store_mb} MB)")
    print(
        f"  {'run':34} {'time':>8} {'driver RSS peak':>16} {'RSS at 1/4, 1/2, 3/4, end':>28} {'store peak':>11} {'spilled':>9}"
    )
    for run, m in results.items():
        quarters = ", ".join(f"{r / 2**20:.0f}" for r in m.rss)
        store = f"{m.store_peak / 2**20:.0f} MiB" if m.store_peak else "-"
        spilled = f"{m.spilled / 2**30:.2f} GiB" if m.store_peak else "-"
        print(f"  {run:34} {m.wall:7.1f}s {m.rss_peak / 2**20:12.0f} MiB {quarters:>24} MiB {store:>11} {spilled:>9}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "hf":
        hf_merge(*sys.argv[2:6])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_800_000)
    ap.add_argument("--small-rows", type=int, default=150_000, help="the case also run with datasets; 0: none")
    ap.add_argument("--object-store-mb", type=int, default=256)
    ap.add_argument("--old", type=Path, help="a checkout of today's design, run beside this tree")
    ap.add_argument("--skip-hf", action="store_true", help="no datasets run on the large case")
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="text-stream-"))
    work.mkdir(parents=True, exist_ok=True)
    # the heads' token, of the bench's own: the runs inherit it from this process's environment
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    try:
        if args.small_rows:
            show("small", run_case("small", work, args.small_rows, args, True), args.object_store_mb)
        show("large", run_case("large", work, args.rows, args, not args.skip_hf), args.object_store_mb)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
