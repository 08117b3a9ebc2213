"""Inputs for the fault tests, generated with the families' own sample writers, and config files for the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from raymerge.text import samples as text_samples
from raymerge.webdataset import samples as wds_samples

# Big enough that a write stage spans several tasks of a few milliseconds each; small enough for a test.
WDS_SHARDS, WDS_PER_SHARD, WDS_MEMBER_BYTES = 8, 40, 100_000
TEXT_ROWS = 60_000


@pytest.fixture(scope="session")
def wds_input(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wds-input") / "images"
    keys = wds_samples.keys(WDS_SHARDS * WDS_PER_SHARD)
    wds_samples.write_shards(root, wds_samples.image_samples(keys, WDS_MEMBER_BYTES), WDS_SHARDS)
    return root


@pytest.fixture(scope="session")
def text_input(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("text-input")
    text_samples.write_jsonl(root / "a.jsonl", text_samples.pairs("a", TEXT_ROWS))
    text_samples.write_jsonl(root / "b.jsonl", text_samples.pairs("b", TEXT_ROWS // 2))
    return root


def wds_config(inp: Path | str, out: Path | str, **output: Any) -> dict[str, Any]:
    return {
        "kind": "webdataset",
        "operation": "concat",
        "inputs": [{"path": str(inp)}],
        "output": {"path": str(out), "maxcount": WDS_PER_SHARD // 2, **output},
    }


def text_config(inp: Path, out: Path | str, **output: Any) -> dict[str, Any]:
    return {
        "kind": "text",
        "operation": "interleave",
        "inputs": [{"path": str(inp / "a.jsonl")}, {"path": str(inp / "b.jsonl")}],
        "interleave": {"probabilities": [0.5, 0.5], "seed": 7, "stopping_strategy": "all_exhausted"},
        "output": {"path": str(out), **output},
    }


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
