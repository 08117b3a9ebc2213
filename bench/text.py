"""Text interleave benchmark: raymerge against Hugging Face `datasets` on the same sources.

pairs (the figures in docs/benchmarks.md): four sources (rows split evenly): JSONL, a hub parquet snapshot, a
save_to_disk folder, a FineFoundry SQLite session. Operation: interleave with probabilities + seed +
all_exhausted -> JSONL. Checks that both outputs are byte-identical.

rows: whole rows (`columns: keep`): three sources with an id, a source name, a score and a list of tags
beside the pair (JSONL, a hub parquet snapshot, a save_to_disk folder); the same interleave -> a Parquet
dataset folder in the Hub layout (HF: `save_to_disk`). Checks that `load_dataset` of raymerge's folder holds
the same rows and features as HF's result.

raymerge runs as a user runs it (`raymerge run`, a fresh process that starts Ray); HF runs load +
interleave_datasets + write with a fresh cache. Prints medians of the repeats, the ratio and Ray start-up
separately.

    python bench/text.py [--case pairs|rows|both] [--rows 1000000] [--repeats 3] [--workdir DIR]
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

import pyarrow as pa
import yaml

from raymerge.text.samples import pairs, write_finefoundry_db, write_hub_snapshot, write_jsonl, write_save_to_disk

PROBABILITIES = [0.4, 0.3, 0.2, 0.1]
ROW_PROBABILITIES = [0.5, 0.3, 0.2]
SEED = 42
STRATEGY = "all_exhausted"


def make_sources(root: Path, rows: int, whole_rows: bool = False) -> dict[str, Path]:
    """Pairs: JSONL, hub snapshot, save_to_disk and a FineFoundry session. Whole rows: the first three."""
    table, n = (rows_table, 3) if whole_rows else (pairs, 4)
    each = rows // n
    out = {
        "jsonl": write_jsonl(root / "a.jsonl", table("jsonl", each)),
        "hub": write_hub_snapshot(root / "hub", {"train": table("hub", each)}, shards=4),
        "saved": write_save_to_disk(root / "saved", table("saved", each), shards=2),
    }
    if not whole_rows:
        out["db"] = write_finefoundry_db(root / "ff.db", {"bench": pairs("db", each)})
    return out


def rows_table(prefix: str, n: int) -> pa.Table:
    """Pairs with the columns whole-row datasets carry beside them."""
    table = pairs(prefix, n)
    return (
        table.append_column("id", pa.array(range(n), pa.int64()))
        .append_column("source", pa.array([prefix] * n, pa.string()))
        .append_column("score", pa.array([i / 7 for i in range(n)], pa.float64()))
        .append_column("tags", pa.array([[prefix, str(i % 5)] for i in range(n)], pa.list_(pa.string())))
    )


def raymerge_config(src: dict[str, Path], out: Path, whole_rows: bool) -> dict:
    inputs = [{"path": str(src["jsonl"])}, {"path": str(src["hub"])}, {"path": str(src["saved"])}]
    probabilities = ROW_PROBABILITIES if whole_rows else PROBABILITIES
    cfg: dict = {
        "kind": "text",
        "operation": "interleave",
        "interleave": {"probabilities": probabilities, "seed": SEED, "stopping_strategy": STRATEGY},
        "inputs": inputs,
        "output": {"path": str(out)},
    }
    if whole_rows:
        cfg["columns"] = "keep"
        cfg["output"]["format"] = "hf"
    else:
        inputs.append({"path": str(src["db"]), "session": "bench"})
    return cfg


def run_raymerge(src: dict[str, Path], out: Path, whole_rows: bool = False) -> tuple[float, float]:
    cfg = raymerge_config(src, out, whole_rows)
    config = out.with_suffix(".yaml")
    config.write_text(yaml.safe_dump(cfg))
    exe = Path(sys.executable).with_name("raymerge")
    t0 = time.perf_counter()
    done = subprocess.run([str(exe), "run", str(config), "--json", "--quiet"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"raymerge failed:\n{done.stderr}")
    return wall, json.loads(done.stdout)["timings"]["ray_start"]


def load_hf_files(src: dict[str, Path], cache: Path) -> list:
    """The JSONL, hub and save_to_disk sources loaded as a `datasets` user loads them."""
    from datasets import load_dataset, load_from_disk

    return [
        load_dataset("json", data_files=str(src["jsonl"]), split="train", cache_dir=str(cache)),
        load_dataset(str(src["hub"]), split="train", cache_dir=str(cache)),
        load_from_disk(str(src["saved"])),
    ]


def run_hf(src: dict[str, Path], out: Path) -> float:
    from datasets import Dataset, interleave_datasets
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    cache = Path(tempfile.mkdtemp(prefix="hf-cache-"))
    t0 = time.perf_counter()
    sets = load_hf_files(src, cache)
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


def run_hf_rows(src: dict[str, Path], out: Path) -> tuple[float, object]:
    """HF's whole-row merge of the same sources, saved as users save a dataset; returns it for the check."""
    from datasets import interleave_datasets
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    cache = Path(tempfile.mkdtemp(prefix="hf-cache-"))
    t0 = time.perf_counter()
    sets = load_hf_files(src, cache)
    sets = [d if d.features == sets[2].features else d.cast(sets[2].features) for d in sets]
    merged = interleave_datasets(sets, probabilities=ROW_PROBABILITIES, seed=SEED, stopping_strategy=STRATEGY)
    merged.save_to_disk(str(out))
    wall = time.perf_counter() - t0
    return wall, (merged, cache)


def same_rows(folder: Path, expected_and_cache: object) -> bool:
    """`load_dataset` of raymerge's Hub folder has HF's rows and features."""
    from datasets import load_dataset

    expected, cache = expected_and_cache  # type: ignore[misc]
    got = load_dataset(str(folder), split="train", cache_dir=str(cache))
    same = got.features == expected.features and got.data.table.equals(expected.flatten_indices().data.table)
    shutil.rmtree(cache, ignore_errors=True)
    return bool(same)


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def bench_pairs(workdir: Path, rows: int, repeats: int) -> None:
    src = make_sources(workdir / "src", rows)
    print(f"pairs: {rows:,} rows in 4 sources; interleave p={PROBABILITIES} seed={SEED} {STRATEGY} -> JSONL")
    ours, starts, theirs = [], [], []
    for i in range(repeats):
        out_r, out_h = workdir / f"raymerge-{i}.jsonl", workdir / f"hf-{i}.jsonl"
        wall, ray_start = run_raymerge(src, out_r)
        ours.append(wall)
        starts.append(ray_start)
        theirs.append(run_hf(src, out_h))
        same = digest(out_r) == digest(out_h)
        with open(out_r, "rb") as f:
            n = sum(1 for _ in f)
        print(
            f"  repeat {i}: raymerge {wall:6.2f}s (Ray start {ray_start:.2f}s)  datasets {theirs[-1]:6.2f}s  "
            f"{n:,} rows out, identical bytes: {same}"
        )
        out_h.unlink()
        if i:
            out_r.unlink()
    summary(ours, starts, theirs)


def bench_rows(workdir: Path, rows: int, repeats: int) -> None:
    src = make_sources(workdir / "src-rows", rows, whole_rows=True)
    print(
        f"rows: {rows:,} whole rows (6 columns) in 3 sources; interleave p={ROW_PROBABILITIES} seed={SEED} "
        f"{STRATEGY} -> Hub Parquet folder (datasets: save_to_disk)"
    )
    ours, starts, theirs = [], [], []
    for i in range(repeats):
        out_r, out_h = workdir / f"raymerge-rows-{i}", workdir / f"hf-rows-{i}"
        wall, ray_start = run_raymerge(src, out_r, whole_rows=True)
        ours.append(wall)
        starts.append(ray_start)
        hf_wall, expected = run_hf_rows(src, out_h)
        theirs.append(hf_wall)
        print(
            f"  repeat {i}: raymerge {wall:6.2f}s (Ray start {ray_start:.2f}s)  datasets {hf_wall:6.2f}s  "
            f"same rows and features: {same_rows(out_r, expected)}"
        )
        shutil.rmtree(out_h, ignore_errors=True)
        shutil.rmtree(out_r, ignore_errors=True)
    summary(ours, starts, theirs)


def summary(ours: list[float], starts: list[float], theirs: list[float]) -> None:
    r, h, s = statistics.median(ours), statistics.median(theirs), statistics.median(starts)
    print(f"median raymerge {r:.2f}s (of which Ray start-up {s:.2f}s), datasets {h:.2f}s")
    print(f"speed-up vs datasets: {h / r:.2f}x end to end; {h / max(r - s, 1e-9):.2f}x excluding Ray start-up")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=("pairs", "rows", "both"), default="both")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="raymerge-bench-text-"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.case in ("pairs", "both"):
        bench_pairs(args.workdir, args.rows, args.repeats)
    if args.case in ("rows", "both"):
        bench_rows(args.workdir, args.rows, args.repeats)


if __name__ == "__main__":
    main()
