"""Small text datasets in every source format, for the demo, the tests and the benchmark.

Written with pyarrow and sqlite3 only, in the layouts Hugging Face `datasets` and FineFoundry
produce, so they load in those tools too.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from raymerge.text.features import features_of
from raymerge.text.finefoundry import SCHEMA_SQL


def pairs(prefix: str, n: int, input_key: str = "input", output_key: str = "output") -> pa.Table:
    """n distinct pairs: `<prefix> question i` / `<prefix> answer i`, so a merged row names its source and position."""
    return pa.table(
        {
            input_key: pa.array([f"{prefix} question {i}" for i in range(n)], pa.string()),
            output_key: pa.array([f"{prefix} answer {i}" for i in range(n)], pa.string()),
        }
    )


def write_jsonl(path: Path, table: pa.Table) -> Path:
    """One object per line, as most instruction datasets ship."""
    import polars as pl

    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(table).write_ndjson(path)
    return path


def write_json_array(path: Path, rows: list[dict[str, Any]]) -> Path:
    """One indented array of objects, as FineFoundry exports and Alpaca/ShareGPT files are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=2))
    return path


def write_hub_snapshot(root: Path, splits: dict[str, pa.Table], shards: int = 1, readme: bool = True) -> Path:
    """`data/{split}-{i:05d}-of-{n:05d}.parquet`, with a README `configs:` header naming them."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    for split, table in splits.items():
        step = -(-table.num_rows // shards)
        for i in range(shards):
            pq.write_table(table.slice(i * step, step), data / f"{split}-{i:05d}-of-{shards:05d}.parquet")
    if readme:
        files = "".join(f"  - split: {s}\n    path: data/{s}-*\n" for s in splits)
        (root / "README.md").write_text(f"---\nconfigs:\n- config_name: default\n  data_files:\n{files}---\n# Pairs\n")
    return root


def write_save_to_disk(root: Path, table: pa.Table, shards: int = 1) -> Path:
    """What `Dataset.save_to_disk` writes: Arrow IPC stream shards, state.json, dataset_info.json."""
    root.mkdir(parents=True, exist_ok=True)
    step = -(-table.num_rows // shards)
    names = [f"data-{i:05d}-of-{shards:05d}.arrow" for i in range(shards)]
    for i, name in enumerate(names):
        with pa.OSFile(str(root / name), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
            w.write_table(table.slice(i * step, step))
    features = features_of(table.schema)
    (root / "dataset_info.json").write_text(
        json.dumps({"citation": "", "description": "", "features": features, "homepage": "", "license": ""})
    )
    state: dict[str, object] = {
        "_data_files": [{"filename": n} for n in names],
        "_fingerprint": "raymerge-sample",
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    (root / "state.json").write_text(json.dumps(state, indent=2))
    return root


def write_dataset_dict(root: Path, splits: dict[str, pa.Table]) -> Path:
    """What `DatasetDict.save_to_disk` writes: one `save_to_disk` folder per split and `dataset_dict.json`."""
    root.mkdir(parents=True, exist_ok=True)
    for split, table in splits.items():
        write_save_to_disk(root / split, table)
    (root / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    return root


def write_hub_cache(root: Path, org: str, name: str, table: pa.Table, sha: str = "0" * 40) -> Path:
    """A hub-cache repo folder: refs/main holds the revision, files live under snapshots/<sha>."""
    repo = root / f"datasets--{org}--{name}"
    write_hub_snapshot(repo / "snapshots" / sha, {"train": table})
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    return repo


def write_finefoundry_db(path: Path, sessions: dict[str, pa.Table]) -> Path:
    """A FineFoundry database with one scrape session per table (columns input, output)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    try:
        con.executescript(SCHEMA_SQL)
        for name, table in sessions.items():
            sid = con.execute(
                "INSERT INTO scrape_sessions (name, source, source_details, pair_count) VALUES (?, 'reddit', ?, ?)",
                (name, f"r/{name}", table.num_rows),
            ).lastrowid
            con.executemany(
                "INSERT INTO scraped_pairs (session_id, input_text, output_text) VALUES (?, ?, ?)",
                ((sid, i, o) for i, o in zip(table["input"].to_pylist(), table["output"].to_pylist(), strict=True)),
            )
        con.commit()
    finally:
        con.close()
    return path


def make_samples(root: str | Path) -> dict[str, Path]:
    """One small dataset per supported source shape, under root: the demo's and the tests' inputs."""
    root = Path(root)
    out: dict[str, Path] = {}
    jsonl = [
        *pairs("jsonl", 7).to_pylist(),
        {"input": "  padded question  ", "output": "\tpadded answer\n"},
        {"input": "   ", "output": "dropped: the input is empty"},
    ]
    out["jsonl"] = write_jsonl(root / "pairs.jsonl", pa.Table.from_pylist(jsonl))
    alpaca = [
        {
            "instruction": f"alpaca instruction {i}",
            "input": f"alpaca context {i}" if i % 2 else "",
            "output": f"alpaca output {i}",
        }
        for i in range(5)
    ]
    out["json"] = write_json_array(root / "alpaca.json", alpaca)
    parquet = root / "prompts.parquet"
    pq.write_table(pairs("parquet", 6, "prompt", "completion"), parquet)
    out["parquet"] = parquet
    csv = root / "qa.csv"
    pacsv.write_csv(pairs("csv", 4, "question", "answer"), csv)
    out["csv"] = csv
    chats = [
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": f"chat question {i}"},
                {"role": "assistant", "content": f"chat answer {i}"},
                {"role": "user", "content": f"chat follow-up {i}"},
                {"role": "assistant", "content": f"chat follow-up answer {i}"},
            ]
        }
        for i in range(3)
    ]
    out["messages"] = write_jsonl(root / "chat.jsonl", pa.Table.from_pylist(chats))
    sharegpt = [
        {
            "conversations": [
                {"from": "human", "value": f"sharegpt question {i}"},
                {"from": "gpt", "value": f"sharegpt answer {i}"},
            ]
        }
        for i in range(3)
    ]
    out["sharegpt"] = write_json_array(root / "sharegpt.json", sharegpt)
    preference = [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(3)]
    out["preference"] = write_jsonl(root / "preference.jsonl", pa.Table.from_pylist(preference))
    out["hub"] = write_hub_snapshot(
        root / "hub-pairs", {"train": pairs("hub", 9), "test": pairs("hub-test", 2)}, shards=2
    )
    out["save_to_disk"] = write_save_to_disk(root / "saved-pairs", pairs("saved", 5))
    out["dataset_dict"] = write_dataset_dict(
        root / "saved-dict", {"train": pairs("dict", 4), "validation": pairs("dict-val", 2)}
    )
    out["hub_cache"] = write_hub_cache(root / "hf-cache" / "hub", "demo", "pairs", pairs("cache", 3))
    out["sqlite"] = write_finefoundry_db(
        root / "finefoundry.db", {"reddit-python": pairs("reddit", 6), "stack-sql": pairs("stack", 3)}
    )
    return out


if __name__ == "__main__":
    import sys

    for name, path in make_samples(sys.argv[1] if len(sys.argv) > 1 else "demo-data/text").items():
        print(f"{name:>13}: {path}")
