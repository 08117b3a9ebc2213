"""Inputs for the fault tests, generated with the families' own sample writers, and config files for the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from raymerge import api
from raymerge.lerobot import samples as lerobot_samples
from raymerge.storage import MANIFEST
from raymerge.text import samples as text_samples
from raymerge.webdataset import samples as wds_samples
from tests.helpers import tree_digest

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


@pytest.fixture(scope="session")
def lerobot_input(tmp_path_factory) -> Path:
    """Two small robot datasets, v3.0 and v2.1, six episodes each with one camera."""
    root = tmp_path_factory.mktemp("lerobot-input")
    for name, version in (("a", "v3.0"), ("b", "v2.1")):
        lerobot_samples.make(None, str(root / name), version=version, lengths=(20,) * 6, cameras=1)
    return root


@pytest.fixture(scope="session")
def wds_reference(ray_address, wds_input, tmp_path_factory) -> dict[str, str]:
    """`output_digest` of an undisturbed run of `wds_config(wds_input, ...)`."""
    out = tmp_path_factory.mktemp("wds-reference") / "out"
    api.run(wds_config(wds_input, out))
    return output_digest(out)


# Differ between any two runs by design: the manifest records the run id and timings; Energon's
# index.uuid is a fresh uuid4 per index, as `energon prepare` writes it.
PER_RUN = {MANIFEST, ".nv-meta/index.uuid"}


def output_digest(path: Path) -> dict[str, str]:
    """Every output file's sha256 except those that name the run; a single-file output is its folder's files."""
    if path.is_file():  # its `<file>.raymerge.json` report names the run
        return {k: v for k, v in tree_digest(path.parent).items() if not k.endswith(".raymerge.json")}
    return {k: v for k, v in tree_digest(path).items() if k not in PER_RUN}


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


def lerobot_config(inp: Path, out: Path | str) -> dict[str, Any]:
    return {
        "kind": "lerobot",
        "inputs": [{"path": str(inp / "a")}, {"path": str(inp / "b")}],
        "output": {"path": str(out)},
    }


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
