"""Editing operations (as LeRobot's `lerobot-edit-dataset` has them), config-driven like merge and split:
checked before anything is written, staged and committed atomically, indices and stats exact, videos copied or
remuxed (a group of pictures re-encoded only where an episode starts between keyframes)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raymerge import api
from raymerge.errors import InvalidInput
from tests.helpers import assert_rejected, tree_digest
from tests.lerobot import util


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot-edit")
    return {
        "v30": util.make(root / "v30", version="v3.0", lengths=(12, 9, 15, 10, 8), seed=4),
        "v21": util.make(root / "v21", version="v2.1", lengths=(8, 11, 7), seed=5, tasks=("place", "push")),
        "gop": util.make(root / "gop", version="v3.0", lengths=(13, 10, 15, 9), keyframe_aligned=False, gop=4),
    }


def delete(src, out, episodes, **output) -> object:
    cfg = {"kind": "lerobot", "operation": "delete_episodes", "inputs": [{"path": str(src)}], "delete": episodes}
    return api.run(cfg | {"output": {"path": str(out), **output}})


@pytest.mark.parametrize(("name", "deleted", "kept"), [("v30", [1, 3], [0, 2, 4]), ("v21", "0:1", [1, 2])])
def test_delete_episodes_keeps_the_others_exactly(ray_address, sources, tmp_path, name, deleted, kept):
    src = sources[name]
    before = tree_digest(src)
    out = tmp_path / "out"
    report = delete(src, out, deleted)
    assert util.info(out)["codebase_version"] == util.info(src)["codebase_version"]
    util.check_merged(out, [(src, kept)])
    util.check_stats(out)
    util.check_episode_stats(out, [(src, kept)])
    util.check_video_timing(out)
    frames = util.frames_by_episode(src)
    used = {t for e in kept for t in frames[e]["task"]}
    assert util.tasks(out) == [t for t in util.tasks(src) if t in used]  # the source's order, the used ones
    assert report.rows_out == sum(len(frames[e]["index"]) for e in kept)
    assert report.inputs[0].rows_in - report.rows_out == sum(len(frames[e]["index"]) for e in frames if e not in kept)
    assert tree_digest(src) == before


def test_delete_between_keyframes_reencodes_only_the_cut_groups(ray_address, sources, tmp_path):
    src = sources["gop"]
    out = tmp_path / "out"
    report = delete(src, out, [1])
    assert 0 < report.details["episodes_reencoded"] < 3
    util.check_merged(out, [(src, [0, 2, 3])], reencoded=True)
    util.check_video_timing(out)
    util.check_stats(out)


def test_delete_episodes_refusals_write_nothing(ray_address, sources, tmp_path):
    src = sources["v30"]
    base = {"kind": "lerobot", "operation": "delete_episodes", "inputs": [{"path": str(src)}]}
    out = tmp_path / "out"
    assert_rejected(base | {"delete": "0:", "output": {"path": str(out)}}, "leaves nothing to write", [src], out)
    assert_rejected(base | {"delete": [7], "output": {"path": str(out)}}, "delete", [src], out)
    with pytest.raises(InvalidInput, match="exactly one input"):
        api.run(base | {"inputs": [{"path": str(src)}] * 2, "delete": [1], "output": {"path": str(out)}})
    with pytest.raises(InvalidInput, match="needs `delete:`"):
        api.run(base | {"output": {"path": str(out)}})
    assert not out.exists()
    stats = json.loads((src / "meta/stats.json").read_text())
    assert np.asarray(stats["observation.state"]["mean"]).shape == (6,)


def remove(src, out, features, **extra) -> object:
    cfg = {"kind": "lerobot", "operation": "remove_feature", "inputs": [{"path": str(src), **extra}]}
    return api.run(cfg | {"remove": features, "output": {"path": str(out)}})


@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
def test_remove_feature_drops_columns_videos_stats_and_info(ray_address, tmp_path, version):
    src = util.make(tmp_path / "src", version=version, with_image=True, lengths=(9, 12, 7), seed=6)
    gone = ["observation.images.cam1", "observation.images.top", "action"]
    out = tmp_path / "out"
    remove(src, out, gone)
    info = util.info(out)
    assert not set(gone) & set(info["features"])
    assert [k for k in util.info(src)["features"] if k not in gone] == list(info["features"])
    table = util.data(out)
    assert not set(gone) & set(table.column_names)
    kept = table.select(["observation.state", "timestamp", "index"])
    assert kept.equals(util.data(src).select(kept.column_names).cast(kept.schema))
    assert not list(out.rglob("*cam1*")), "the removed camera's videos are not written"
    stats = json.loads((out / "meta/stats.json").read_text())
    assert not set(gone) & set(stats)
    theirs = json.loads((src / "meta/stats.json").read_text()) if version == "v3.0" else None
    for name in ("min", "max", "mean", "std", "count") if theirs else ():  # pooled from the same episodes
        np.testing.assert_allclose(stats["observation.images.cam0"][name], theirs["observation.images.cam0"][name])
    for row in util.episodes(out):
        assert not [c for c in row if any(g in c for g in gone)]
    for episode, features in util.episode_stats(out).items():
        assert not set(gone) & set(features), episode
    util.check_merged(out, [(src, [0, 1, 2])], cameras=1)
    util.check_video_timing(out)


def test_remove_feature_refusals_write_nothing(ray_address, sources, tmp_path):
    src = sources["v30"]
    out = tmp_path / "out"
    base = {"kind": "lerobot", "operation": "remove_feature", "inputs": [{"path": str(src)}]}
    assert_rejected(base | {"remove": ["index"], "output": {"path": str(out)}}, "cannot be removed", [src], out)
    assert_rejected(base | {"remove": ["nope"], "output": {"path": str(out)}}, "no feature 'nope'", [src], out)
    with pytest.raises(InvalidInput, match="needs `remove:`"):
        api.run(base | {"output": {"path": str(out)}})
