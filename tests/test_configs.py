"""Every example config in configs/ is valid as shipped, so users can start from any of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from raymerge.families import load_config

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_there_is_an_example_per_family():
    kinds = {load_config(p, environ={}).kind for p in CONFIGS}
    assert kinds == {"text", "webdataset", "lerobot"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_is_valid(path):
    cfg = load_config(path, environ={})
    assert cfg.inputs and cfg.output.path
    assert cfg.output.overwrite is False  # examples never replace data silently
