"""Source formats: detection, HF folders, splits/configs, FineFoundry sessions, read errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymerge import storage
from raymerge.errors import InvalidInput
from raymerge.text.describe import detect, source_pairs
from raymerge.text.readers import read_chunk
from raymerge.text.samples import pairs, write_hub_snapshot
from raymerge.text.sources import Chunk, open_source


def _open(path, **kw):
    fs, p = storage.resolve(str(path))
    return open_source(fs, p, **kw)


def _all_inputs(path, **kw) -> list[str]:
    fs, p = storage.resolve(str(path))
    return [r["input"] for r in source_pairs(open_source(fs, p, **kw))]


@pytest.mark.parametrize(
    "key,kind,first",
    [
        ("jsonl", "jsonl", "jsonl question 0"),
        ("json", "json", "alpaca instruction 0"),
        ("parquet", "parquet", "parquet question 0"),
        ("csv", "csv", "csv question 0"),
        ("messages", "jsonl", "chat question 0"),
        ("sharegpt", "json", "sharegpt question 0"),
        ("hub", "hf", "hub question 0"),
        ("save_to_disk", "save_to_disk", "saved question 0"),
        ("dataset_dict", "save_to_disk", "dict question 0"),
        ("hub_cache", "hf", "cache question 0"),
        ("sqlite", "sqlite", "reddit question 0"),
    ],
)
def test_every_sample_format_is_detected_and_read(samples, key, kind, first):
    fs, p = storage.resolve(str(samples[key]))
    assert detect(fs, p)
    src = open_source(fs, p, session="reddit-python" if key == "sqlite" else None)
    assert src.kind == kind
    assert _all_inputs(samples[key], session="reddit-python" if key == "sqlite" else None)[0] == first


def test_hub_snapshot_split_and_readme_configs(samples):
    assert _all_inputs(samples["hub"]) == [f"hub question {i}" for i in range(9)]
    assert _all_inputs(samples["hub"], split="test") == ["hub-test question 0", "hub-test question 1"]
    with pytest.raises(InvalidInput, match=r"no split 'dev'; splits found: train, test"):
        _open(samples["hub"], split="dev")


def test_hub_configs_and_split_guessing_without_readme(tmp_path):
    root = tmp_path / "repo"
    (root / "README.md").parent.mkdir()
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: small\n  data_files: small/*.parquet\n"
        "- config_name: big\n  default: true\n  data_files:\n  - split: train\n    path: [big/a.parquet, big/b.parquet]\n---\n"
    )
    for name, rows in [("small/x.parquet", 2), ("big/a.parquet", 1), ("big/b.parquet", 3)]:
        (root / name).parent.mkdir(exist_ok=True)
        pq.write_table(pairs(name, rows), root / name)
    assert len(_all_inputs(root)) == 4  # the default config
    assert _all_inputs(root, config="small") == ["small/x.parquet question 0", "small/x.parquet question 1"]
    with pytest.raises(InvalidInput, match=r"no config 'medium'; configs found: small, big"):
        _open(root, config="medium")
    plain = write_hub_snapshot(
        tmp_path / "plain", {"train": pairs("tr", 2), "validation": pairs("va", 1)}, readme=False
    )
    assert _all_inputs(plain, split="validation") == ["va question 0"]


def test_dataset_dict_split(samples):
    assert _all_inputs(samples["dataset_dict"], split="validation") == ["dict-val question 0", "dict-val question 1"]


def test_save_to_disk_sample_loads_in_hf_datasets(samples):
    from datasets import load_from_disk

    assert load_from_disk(str(samples["save_to_disk"]))["input"][:2] == ["saved question 0", "saved question 1"]


def test_hub_cache_follows_refs_main(samples, tmp_path):
    repo = tmp_path / "cache"
    shutil.copytree(samples["hub_cache"], repo, symlinks=True)
    (repo / "refs" / "main").write_text("f" * 40)
    with pytest.raises(InvalidInput, match=r"refs/main points to f{40}, but snapshots/f{40} is missing"):
        _open(repo)


def test_sqlite_session_by_name_and_id(samples):
    assert _all_inputs(samples["sqlite"], session=2)[0] == "stack question 0"
    assert _all_inputs(samples["sqlite"], session="stack-sql")[-1] == "stack question 2"
    with pytest.raises(InvalidInput, match=r"no session named 'nope'; sessions: 1: 'reddit-python' \(reddit, "):
        _open(samples["sqlite"], session="nope")
    with pytest.raises(InvalidInput, match=r"choose a session"):
        _open(samples["sqlite"])


def test_jsonl_read_in_byte_ranges_keeps_every_line_once(tmp_path, monkeypatch):
    from raymerge.text import sources

    monkeypatch.setattr(sources, "CHUNK_BYTES", 50)
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"input": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(40)))
    src = _open(path)
    assert len(src.chunks) > 5
    assert _all_inputs(path) == [f"q{i}" for i in range(40)]


def test_bad_json_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"input": "a", "output": "b"}\n{"input": "c", "output": "d"}\n{"input": "e", "output": \n')
    with pytest.raises(InvalidInput, match=r"bad.jsonl: line 3: not valid JSON"):
        _all_inputs(path)
    arr = tmp_path / "bad.json"
    arr.write_text('[\n {"input": "a", "output": "b"},\n {"input": "c" "output": "d"}\n]')
    with pytest.raises(InvalidInput, match=r"bad.json: line 3 column 16: not valid JSON: Expecting"):
        _all_inputs(arr)


def test_unreadable_parquet_is_named(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InvalidInput, match=r"broken.parquet: not a readable parquet file"):
        _open(path)


def test_missing_path(tmp_path):
    with pytest.raises(InvalidInput, match=r"nowhere.jsonl: no such file or folder"):
        _open(tmp_path / "nowhere.jsonl")


def test_csv_values_stay_text(tmp_path):
    path = tmp_path / "codes.csv"
    path.write_text("question,answer\nzip of paris?,075001\n")
    fs, p = storage.resolve(str(path))
    assert read_chunk(fs, Chunk("csv", p)).column("answer").to_pylist() == ["075001"]
    assert isinstance(read_chunk(fs, Chunk("csv", p)), pa.Table)
    assert Path(p).exists()
