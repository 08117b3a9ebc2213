"""The checks that run before Ray: a rejected config never needs an executor, the input bytes that size the
run, and the plan reusing what the check read."""

from __future__ import annotations

from pathlib import Path

import pytest

import raymerge.lerobot
from raymerge.errors import InvalidInput
from raymerge.executor import Executor
from raymerge.lerobot import FAMILY, Config
from tests.lerobot import util


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lerobot-check")
    return {
        "h264": util.make(root / "h264", version="v3.0", lengths=(6, 5, 4), cameras=1),
        "av1": util.make(root / "av1", version="v3.0", lengths=(4,), cameras=1, codec="av1"),
    }


def _config(out: Path, *inputs: dict) -> Config:
    return Config.model_validate({"kind": "lerobot", "inputs": list(inputs), "output": {"path": str(out)}})


def test_input_bytes_are_those_of_the_files_the_selection_needs(datasets, tmp_path):
    root = datasets["h264"]
    every = sum(p.stat().st_size for sub in ("data", "videos") for p in (root / sub).rglob("*") if p.is_file())
    assert FAMILY.check(_config(tmp_path / "out", {"path": str(root)})) == every
    # episode 2 is alone in the second data and video files
    first_files = [
        root / "data/chunk-000/file-000.parquet",
        root / "videos/observation.images.cam0/chunk-000/file-000.mp4",
    ]
    picked = FAMILY.check(_config(tmp_path / "out", {"path": str(root), "episodes": [0, 1]}))
    assert picked == sum(p.stat().st_size for p in first_files)


def test_declared_codecs_that_differ_are_refused_before_any_video_is_probed(datasets, tmp_path):
    cfg = _config(tmp_path / "out", {"path": str(datasets["h264"])}, {"path": str(datasets["av1"])})
    with pytest.raises(
        InvalidInput,
        match=r"input av1: video 'observation.images.cam0': codec av1 != h264 \(declared in .*av1/meta/info.json\)",
    ):
        FAMILY.check(cfg)


def test_the_plan_reuses_what_the_check_read(datasets, tmp_path, monkeypatch):
    reads = []
    check_config = raymerge.lerobot.check_config
    monkeypatch.setattr(raymerge.lerobot, "check_config", lambda cfg: reads.append(cfg) or check_config(cfg))
    cfg = _config(tmp_path / "out", {"path": str(datasets["h264"]), "episodes": "1:"})
    FAMILY.check(cfg)
    with Executor.in_process() as executor:
        plan = FAMILY.plan(cfg, executor)
        assert reads == [cfg]
        assert plan.report.rows_out == 9
        FAMILY.plan(cfg, executor)  # taken once: a second plan reads again
    assert reads == [cfg, cfg]
