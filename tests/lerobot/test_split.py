"""Split, conversion and the round trips they promise: merge(split(x)) == x, split(merge(a, b)) == a, b."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from raymerge import api
from raymerge.errors import InvalidInput
from tests.helpers import tree_digest
from tests.lerobot import util


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot-split")
    return {
        "a": util.make(root / "a", version="v3.0", lengths=(12, 9, 15, 10), seed=3),
        "b": util.make(root / "b", version="v2.1", lengths=(8, 11, 7), seed=4, tasks=("place the cube", "push")),
        # One encode per file (2 episodes), keyframe every 4 frames: episode 0 ends and episode 1 starts
        # inside a group of pictures; episodes 2 and 3 are cut on group boundaries.
        "gop": util.make(root / "gop", version="v3.0", lengths=(6, 10, 12, 8), seed=5, keyframe_aligned=False, gop=4),
    }


def run(cfg: dict, out: Path):
    return api.run({"kind": "lerobot", **cfg, "output": {"path": str(out), **cfg.get("output", {})}})


def split(src: Path, out: Path, spec: dict):
    return run({"operation": "split", "inputs": [{"path": str(src)}], "split": spec}, out)


def merge(paths: list[Path], out: Path, **output):
    return run({"operation": "merge", "inputs": [{"path": str(p)} for p in paths], "output": output}, out)


def same_dataset(x: Path, y: Path) -> None:
    """Same frames, tasks, episodes and stats; column types follow each one's version (vectors are fixed-size
    lists in v2.1, plain lists in v3.0), so the frames are compared as the first one types them."""
    theirs = util.data(y)
    ours = util.data(x)
    assert ours.equals(theirs.cast(ours.schema))
    assert util.tasks(x) == util.tasks(y)
    keys = ("episode_index", "tasks", "length")
    assert [{k: r[k] for k in keys} for r in util.episodes(x)] == [{k: r[k] for k in keys} for r in util.episodes(y)]
    util.check_stats(x)
    if not (y / "meta/stats.json").exists():  # a v2.1 source keeps only per-episode stats
        return
    sx, sy = (json.loads((p / "meta/stats.json").read_text()) for p in (x, y))
    for key in util.NUMERIC:
        for name in ("min", "max", "mean", "std", "count", *util.QUANTILES):
            np.testing.assert_allclose(sx[key][name], sy[key][name], rtol=1e-6, err_msg=f"{key} {name}")


def test_split_then_merge_gives_back_the_dataset(ray_address, sources, tmp_path):
    a = sources["a"]
    before = tree_digest(a)
    report = split(a, tmp_path / "parts", {"episodes": {"train": "0:3", "val": [3]}})
    assert report.details["splits"]["train"]["episodes"] == 3 and report.details["splits"]["val"]["frames"] == 10
    train, val = tmp_path / "parts/train", tmp_path / "parts/val"
    util.check_merged(train, [(a, [0, 1, 2])])
    util.check_merged(val, [(a, [3])])
    util.check_stats(val)
    assert util.tasks(val) == ["place the cube"]  # only the tasks the split uses
    merge([train, val], tmp_path / "back")
    same_dataset(tmp_path / "back", a)
    util.check_merged(tmp_path / "back", [(a, [0, 1, 2, 3])])
    assert tree_digest(a) == before


def test_split_of_a_merge_by_source_ranges_gives_back_the_sources(ray_address, sources, tmp_path):
    a, b = sources["a"], sources["b"]
    merge([a, b], tmp_path / "ab", format_version="v2.1")
    split(tmp_path / "ab", tmp_path / "parts", {"episodes": {"a": "0:4", "b": "4:7"}})
    same_dataset(tmp_path / "parts/a", a)
    same_dataset(tmp_path / "parts/b", b)
    util.check_merged(tmp_path / "parts/b", [(b, [0, 1, 2])])


def test_convert_v21_to_v30_and_back(ray_address, sources, tmp_path):
    b = sources["b"]
    merge([b], tmp_path / "v30", format_version="v3.0")
    assert util.info(tmp_path / "v30")["codebase_version"] == "v3.0"
    util.check_merged(tmp_path / "v30", [(b, [0, 1, 2])])
    merge([tmp_path / "v30"], tmp_path / "v21", format_version="v2.1")
    same_dataset(tmp_path / "v21", b)
    util.check_merged(tmp_path / "v21", [(b, [0, 1, 2])])


def test_split_cutting_between_keyframes_reencodes_only_those_episodes(ray_address, sources, tmp_path):
    gop = sources["gop"]
    report = split(gop, tmp_path / "parts", {"episodes": {"first": [0, 2], "rest": [1, 3]}})
    assert report.details["splits"]["first"]["episodes_reencoded"] == 1
    assert report.details["splits"]["rest"]["episodes_reencoded"] == 1
    assert report.details["episodes_reencoded"] == 2
    util.check_merged(tmp_path / "parts/first", [(gop, [0, 2])], reencoded=True)
    util.check_merged(tmp_path / "parts/rest", [(gop, [1, 3])], reencoded=True)
    # the episodes cut on group boundaries are copied packet for packet
    from fsspec.implementations.local import LocalFileSystem

    from raymerge.lerobot.video.decode import decode_at

    fs = LocalFileSystem()
    for part, new, old in (("first", 1, 2), ("rest", 1, 3)):
        for key in ("observation.images.cam0", "observation.images.cam1"):
            (out_file, out_from), (src_file, src_from) = (
                util.video_ref(tmp_path / "parts" / part, new, key),
                util.video_ref(gop, old, key),
            )
            stamps = [i / 10 for i in range(0, 8)]
            np.testing.assert_array_equal(
                decode_at(fs, str(out_file), [out_from + t for t in stamps]),
                decode_at(fs, str(src_file), [src_from + t for t in stamps]),
            )


def test_split_fractions_with_seed_are_deterministic(ray_address, sources, tmp_path):
    spec = {"fractions": {"train": 0.75, "val": 0.25}, "seed": 7}
    split(sources["a"], tmp_path / "one", spec)
    split(sources["a"], tmp_path / "two", spec)
    for name in ("train", "val"):
        assert util.data(tmp_path / "one" / name).equals(util.data(tmp_path / "two" / name))
    assert util.info(tmp_path / "one/train")["total_episodes"] == 3


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"fractions": {"train": 0.7, "val": 0.2}}, r"split.fractions: must sum to 1, got 0.9"),
        ({"fractions": {"train": 1.0, "val": 0.0}}, r"split.fractions.val: must be > 0"),
        ({"fractions": {"train": 0.9, "val": 0.1}}, r"split.fractions.val: split would be empty"),
        ({"episodes": {"train": "0:3", "val": [2]}}, r"episode 2 is in both 'train' and 'val'"),
        ({"episodes": {"train": [0, 0]}}, r"episode 0 is listed twice"),
        ({"episodes": {"train": [9]}}, r"episode 9 does not exist"),
    ],
)
def test_bad_split(ray_address, sources, tmp_path, spec, match):
    a = sources["a"]
    before = tree_digest(a)
    with pytest.raises(InvalidInput, match=match):
        split(a, tmp_path / "parts", spec)
    assert not (tmp_path / "parts").exists()
    assert tree_digest(a) == before


def test_split_refuses_an_existing_output(ray_address, sources, tmp_path):
    (tmp_path / "parts").mkdir()
    with pytest.raises(InvalidInput, match="already exists"):
        split(sources["a"], tmp_path / "parts", {"episodes": {"x": [0]}})
    assert list((tmp_path / "parts").iterdir()) == []


def test_unassigned_episodes_are_reported(ray_address, sources, tmp_path):
    report = split(sources["a"], tmp_path / "parts", {"episodes": {"x": [1]}})
    assert report.details["episodes_in_no_split"] == [0, 2, 3]
    assert any("in no split" in w for w in report.warnings)


@pytest.mark.parametrize(
    "spec, reencoded",
    [
        # episode 0 ends and episode 1 starts inside a group of pictures of the first file
        ({"first": [0, 2], "rest": [1, 3]}, {"first": [0], "rest": [0]}),
        # the only cut is at episode 3, which starts on a keyframe of the second file
        ({"first": [0, 1, 2], "rest": [3]}, {"first": [], "rest": []}),
    ],
)
def test_plan_predicts_the_reencoded_episodes(ray_address, sources, tmp_path, spec, reencoded):
    cfg = {
        "kind": "lerobot",
        "operation": "split",
        "inputs": [{"path": str(sources["gop"])}],
        "split": {"episodes": spec},
        "output": {"path": str(tmp_path / "parts")},
    }
    planned = api.plan(cfg).report.details["splits"]
    assert not (tmp_path / "parts").exists()
    ran = api.run(cfg).details["splits"]
    for name in spec:
        assert planned[name]["reencoded_episodes"] == ran[name]["reencoded_episodes"] == reencoded[name]
        assert planned[name]["episodes_reencoded"] == ran[name]["episodes_reencoded"]
        assert planned[name]["videos_reencoded"] == (2 if reencoded[name] else 0)  # one file per camera


def test_split_and_merge_round_trip_on_s3(ray_address, sources, s3, tmp_path):
    """The round trip with every input and output on object storage, on a source cut between keyframes."""
    gop = sources["gop"]
    fs, bucket, opts = s3["fs"], s3["bucket"], s3["storage_options"]
    fs.put(str(gop), f"{bucket}/in/gop", recursive=True)
    report = api.run(
        {
            "kind": "lerobot",
            "operation": "split",
            "inputs": [{"path": f"s3://{bucket}/in/gop", "storage_options": opts}],
            "split": {"episodes": {"first": [0, 2], "rest": [1, 3]}},
            "output": {"path": f"s3://{bucket}/parts", "storage_options": opts},
        }
    )
    assert report.details["splits"]["first"]["episodes"] == 2
    api.run(
        {
            "kind": "lerobot",
            "operation": "merge",
            "inputs": [{"path": f"s3://{bucket}/parts/{name}", "storage_options": opts} for name in ("first", "rest")],
            "output": {"path": f"s3://{bucket}/back", "storage_options": opts},
        }
    )
    local = tmp_path / "back"
    fs.get(f"{bucket}/back", str(local), recursive=True)
    assert (local / "raymerge.json").exists()
    util.check_merged(local, [(gop, [0, 2, 1, 3])], reencoded=True)
    util.check_stats(local)
