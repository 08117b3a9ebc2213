"""inspect and preview: what a dataset path or a config holds, read in this process."""

from __future__ import annotations

import json

from raymerge import api, storage
from raymerge.families import load_config
from raymerge.text.describe import inspect, preview


def test_inspect_lists_sessions_and_columns(samples):
    fs, p = storage.resolve(str(samples["sqlite"]))
    got = inspect(fs, p)
    assert [(s["id"], s["name"], s["pairs"]) for s in got["sessions"]] == [(1, "reddit-python", 6), (2, "stack-sql", 3)]
    fs, p = storage.resolve(str(samples["hub"]))
    got = inspect(fs, p)
    assert got["rows"] == 9 and got["columns"] == {"input": "string", "output": "string"}
    assert got["mapping"] == "input -> output" and got["splits"] == ["train", "test"]


def test_preview_of_a_file(samples):
    fs, p = storage.resolve(str(samples["json"]))
    rows = preview(fs, p, 2)
    assert rows == [
        {"input": "alpaca instruction 0", "output": "alpaca output 0"},
        {"input": "alpaca instruction 1\nalpaca context 1", "output": "alpaca output 1"},
    ]


def test_preview_of_a_config_is_the_head_of_its_run(ray_address, samples, tmp_path):
    cfg = {
        "kind": "text",
        "operation": "interleave",
        "interleave": {"probabilities": [0.6, 0.4], "seed": 2, "stopping_strategy": "all_exhausted"},
        "inputs": [{"path": str(samples["jsonl"])}, {"path": str(samples["csv"])}],
        "output": {"path": str(tmp_path / "o.jsonl")},
    }
    head = api.preview(load_config(cfg), 6)
    api.run(cfg)
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(rows) > 6 and head == rows[:6]
