"""Text interleave benchmark: raymerge against Hugging Face `datasets` on the same four sources.

Sources (rows split evenly): JSONL, a hub parquet snapshot, a save_to_disk folder, a FineFoundry
SQLite session. Operation: interleave with probabilities + seed + all_exhausted -> JSONL.
raymerge runs as a user runs it (`raymerge run`, a fresh process that starts Ray); HF runs
load + interleave_datasets + to_json with a fresh cache. Prints medians of the repeats, the
ratio, Ray start-up separately, and whether both outputs are byte-identical.

    python bench/text.py [--rows 1000000] [--repeats 3] [--workdir DIR (default: a new temp folder)]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from raymerge.text.samples import pairs, write_finefoundry_db, write_hub_snapshot, write_jsonl, write_save_to_disk

PROBABILITIES = [0.4, 0.3, 0.2, 0.1]
SEED = 42
STRATEGY = "all_exhausted"


def make_sources(root: Path, rows: int) -> dict[str, Path]:
    each = rows // 4
    return {
        "jsonl": write_jsonl(root / "a.jsonl", pairs("jsonl", each)),
        "hub": write_hub_snapshot(root / "hub", {"train": pairs("hub", each)}, shards=4),
        "saved": write_save_to_disk(root / "saved", pairs("saved", each), shards=2),
        "db": write_finefoundry_db(root / "ff.db", {"bench": pairs("db", each)}),
    }


def run_raymerge(src: dict[str, Path], out: Path) -> tuple[float, float]:
    cfg = {
        "kind": "text",
        "operation": "interleave",
        "interleave": {"probabilities": PROBABILITIES, "seed": SEED, "stopping_strategy": STRATEGY},
        "inputs": [
            {"path": str(src["jsonl"])},
            {"path": str(src["hub"])},
            {"path": str(src["saved"])},
            {"path": str(src["db"]), "session": "bench"},
        ],
        "output": {"path": str(out)},
    }
    config = out.with_suffix(".yaml")
    config.write_text(yaml.safe_dump(cfg))
    exe = Path(sys.executable).with_name("raymerge")
    t0 = time.perf_counter()
    done = subprocess.run([str(exe), "run", str(config), "--json", "--quiet"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"raymerge failed:\n{done.stderr}")
    return wall, json.loads(done.stdout)["timings"]["ray_start"]


def run_hf(src: dict[str, Path], out: Path) -> float:
    from datasets import Dataset, interleave_datasets, load_dataset, load_from_disk
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    cache = Path(tempfile.mkdtemp(prefix="hf-cache-"))
    t0 = time.perf_counter()
    sets = [
        load_dataset("json", data_files=str(src["jsonl"]), split="train", cache_dir=str(cache)),
        load_dataset(str(src["hub"]), split="train", cache_dir=str(cache)),
        load_from_disk(str(src["saved"])),
    ]
    con = sqlite3.connect(src["db"])
    sets.append(
        Dataset.from_sql(
            "SELECT input_text AS input, output_text AS output FROM scraped_pairs WHERE session_id = 1 ORDER BY id",
            con,
            cache_dir=str(cache),
        )
    )
    # HF refuses to align string with large_string columns; users cast, so the benchmark does too.
    sets = [d if d.features == sets[2].features else d.cast(sets[2].features) for d in sets]
    merged = interleave_datasets(sets, probabilities=PROBABILITIES, seed=SEED, stopping_strategy=STRATEGY)
    merged.to_json(str(out), force_ascii=False)
    wall = time.perf_counter() - t0
    con.close()
    shutil.rmtree(cache, ignore_errors=True)
    return wall


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="raymerge-bench-text-"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    src = make_sources(args.workdir / "src", args.rows)
    print(f"{args.rows:,} rows in 4 sources; interleave p={PROBABILITIES} seed={SEED} {STRATEGY} -> JSONL")
    ours, starts, theirs = [], [], []
    for i in range(args.repeats):
        out_r, out_h = args.workdir / f"raymerge-{i}.jsonl", args.workdir / f"hf-{i}.jsonl"
        wall, ray_start = run_raymerge(src, out_r)
        ours.append(wall)
        starts.append(ray_start)
        theirs.append(run_hf(src, out_h))
        same = digest(out_r) == digest(out_h)
        with open(out_r, "rb") as f:
            rows = sum(1 for _ in f)
        print(
            f"  repeat {i}: raymerge {wall:6.2f}s (Ray start {ray_start:.2f}s)  datasets {theirs[-1]:6.2f}s  "
            f"{rows:,} rows out, identical bytes: {same}"
        )
        out_h.unlink()
        if i:
            out_r.unlink()
    r, h, s = statistics.median(ours), statistics.median(theirs), statistics.median(starts)
    print(f"median raymerge {r:.2f}s (of which Ray start-up {s:.2f}s), datasets {h:.2f}s")
    print(f"speed-up vs datasets: {h / r:.2f}x end to end; {h / max(r - s, 1e-9):.2f}x excluding Ray start-up")


if __name__ == "__main__":
    main()
