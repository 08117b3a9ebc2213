"""Dataset folders Hugging Face users load directly: the Hub Parquet layout (with a dataset card `load_dataset`
reads) and `save_to_disk`, sharded by `max_shard_size`, locally and on object storage."""

from __future__ import annotations

import json
import re
import sqlite3

import pandas as pd
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, interleave_datasets, load_dataset, load_dataset_builder, load_from_disk

from raymerge import api
from raymerge.errors import InvalidInput
from raymerge.families import load_config
from raymerge.text.folders import shard_ranges
from raymerge.text.samples import pairs, write_finefoundry_db, write_jsonl

INTERLEAVE = {"probabilities": [0.5, 0.5], "seed": 7, "stopping_strategy": "all_exhausted"}


@pytest.fixture
def two(tmp_path):
    a = write_jsonl(tmp_path / "in" / "a.jsonl", pairs("a", 40))
    db = write_finefoundry_db(tmp_path / "in" / "ff.db", {"s": pairs("s", 25)})
    expected = interleave_datasets([Dataset(pairs("a", 40)), Dataset(pairs("s", 25))], **INTERLEAVE)
    cfg = {
        "kind": "text",
        "operation": "interleave",
        "interleave": INTERLEAVE,
        "inputs": [{"path": str(a)}, {"path": str(db)}],
    }
    return cfg, expected


def test_hub_folder_in_shards_with_a_card_datasets_reads(ray_address, two, tmp_path):
    cfg, expected = two
    out = tmp_path / "merged"
    api.run({**cfg, "output": {"path": str(out), "format": "hf", "max_shard_size": "1KB"}})
    shards = sorted(p.relative_to(out).as_posix() for p in (out / "data").iterdir())
    n = len(shards)
    assert n > 1 and shards == [f"data/train-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
    # contiguous shards, as Dataset.shard(n, i, contiguous=True) cuts them
    assert [pq.read_metadata(out / s).num_rows for s in shards] == [
        len(expected.shard(n, i, contiguous=True)) for i in range(n)
    ]
    cache = str(tmp_path / "cache")
    info = load_dataset_builder(str(out), cache_dir=cache).info
    assert info.features == expected.features
    assert info.splits["train"].num_examples == len(expected)
    got = load_dataset(str(out), split="train", cache_dir=cache)
    assert got.to_list() == expected.to_list()
    card = (out / "README.md").read_text()
    assert re.search(
        r"configs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-\*", card
    )


def test_save_to_disk_export_with_its_split(ray_address, two, tmp_path):
    cfg, expected = two
    saved = tmp_path / "saved"
    api.run(
        {
            **cfg,
            "output": {"path": str(tmp_path / "m.jsonl")},
            "exports": [
                {"path": str(saved), "format": "save_to_disk", "split": "validation", "max_shard_size": 700},
                {"path": str(tmp_path / "m.db"), "session_name": "merged"},
                {"path": str(tmp_path / "m.parquet")},
            ],
        }
    )
    got = load_from_disk(str(saved))
    assert got.split == "validation" and got.features == expected.features
    assert got.to_list() == expected.to_list()
    state = json.loads((saved / "state.json").read_text())
    files = [f["filename"] for f in state["_data_files"]]
    assert len(files) > 1 and files[0] == f"data-00000-of-{len(files):05d}.arrow"
    info = json.loads((saved / "dataset_info.json").read_text())
    assert info["features"] == {
        "input": {"dtype": "string", "_type": "Value"},
        "output": {"dtype": "string", "_type": "Value"},
    }
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert rows == got.to_list()
    con = sqlite3.connect(tmp_path / "m.db")  # FineFoundry's schema
    db_rows = con.execute(
        "SELECT p.input_text, p.output_text, s.pair_count FROM scraped_pairs p "
        "JOIN scrape_sessions s ON s.id = p.session_id WHERE s.name = 'merged' ORDER BY p.id"
    ).fetchall()
    con.close()
    assert [{"input": i, "output": o} for i, o, _ in db_rows] == expected.to_list()
    assert {n for *_, n in db_rows} == {len(expected)}
    assert pd.read_parquet(tmp_path / "m.parquet").to_dict("records") == expected.to_list()


def test_shard_ranges_follow_datasets():
    assert shard_ranges(10, 0, 100) == [(0, 10)]
    assert shard_ranges(10, 250, 100) == [(0, 4), (4, 7), (7, 10)]  # 250 // 100 + 1 shards
    assert shard_ranges(2, 10_000, 100) == [(0, 1), (1, 2)]  # never more shards than rows
    assert shard_ranges(0, 0, 100) == [(0, 0)]


def test_hub_folder_on_object_storage(ray_address, two, s3, tmp_path):
    cfg, expected = two
    fs, bucket, options = s3["fs"], s3["bucket"], s3["storage_options"]
    url = f"s3://{bucket}/out/merged"
    api.run({**cfg, "output": {"path": url, "format": "hf", "max_shard_size": 2000, "storage_options": options}})
    keys = sorted(k[len(bucket) + 1 :] for k in fs.find(f"{bucket}/out"))
    assert [k for k in keys if not k.endswith("raymerge.json")] == [
        "out/merged/README.md",
        "out/merged/data/train-00000-of-00002.parquet",
        "out/merged/data/train-00001-of-00002.parquet",
    ]
    fs.get(f"{bucket}/out/merged", str(tmp_path / "copy"), recursive=True)
    got = load_dataset(str(tmp_path / "copy"), split="train", cache_dir=str(tmp_path / "cache"))
    assert got.to_list() == expected.to_list()


@pytest.mark.parametrize(
    "output,message",
    [
        (
            {"path": "o.jsonl", "max_shard_size": "1GB"},
            r"split and max_shard_size only apply to format: hf or save_to_disk",
        ),
        ({"path": "o", "format": "hf", "max_shard_size": "lots"}, r"'lots' is not a size; write bytes or e.g. 500MB"),
        ({"path": "o", "format": "hf", "split": "my split"}, r"split 'my split': use letters, digits"),
        ({"path": "merged"}, r"cannot tell the format of 'merged'.*hf \| save_to_disk"),
    ],
)
def test_bad_folder_targets_are_refused_by_key(output, message):
    with pytest.raises(InvalidInput, match=message):
        load_config({"kind": "text", "operation": "concat", "inputs": [{"path": "a.jsonl"}], "output": output})
