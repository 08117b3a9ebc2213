"""`operation: modify_tasks` (LeRobot 0.6's three forms) on both versions: the task table sorted as LeRobot
writes it, every frame's task_index, the episodes' task lists, and the task_index stats exact; everything else
(frames, images, videos) as it was."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from raymerge import api
from tests.helpers import assert_rejected, tree_digest
from tests.lerobot import util

EPISODES = {"v30": [0, 1, 2, 3], "v21": [0, 1, 2]}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Both versions with two cameras and an image feature; each camera's video in files the output keeps as
    they are (one v3.0 file per camera, one v2.1 file per episode), so that they are copied."""
    root = tmp_path_factory.mktemp("lerobot-tasks")
    return {
        "v30": util.make(
            root / "v30", version="v3.0", lengths=(12, 9, 15, 10), seed=7, episodes_per_file=4, with_image=True
        ),
        "v21": util.make(
            root / "v21", version="v2.1", lengths=(8, 11, 7), seed=8, tasks=("place", "push"), with_image=True
        ),
    }


def modify(src: Path, out: Path, tasks: dict) -> object:
    cfg = {"kind": "lerobot", "operation": "modify_tasks", "inputs": [{"path": str(src)}], "tasks": tasks}
    return api.run(cfg | {"output": {"path": str(out)}})


def check_retasked(out: Path, src: Path, expected: dict[int, list[str]]) -> None:
    """`expected`: each episode's task text per frame. Tasks are the distinct texts sorted; task_index, the
    episodes' task lists, info and stats follow; every other column, image and video is the source's."""
    tasks = sorted({t for texts in expected.values() for t in texts})
    assert util.tasks(out) == tasks
    assert util.info(out)["total_tasks"] == len(tasks)
    got, before = util.data(out), util.data(src)
    assert got.drop_columns(["task_index"]).equals(before.drop_columns(["task_index"]))
    for ep, texts in expected.items():
        rows = got.filter(pc.equal(got["episode_index"], ep))
        assert rows["task_index"].to_pylist() == [tasks.index(t) for t in texts], f"episode {ep}"
    for row in util.episodes(out):
        assert list(row["tasks"]) == list(dict.fromkeys(expected[row["episode_index"]]))
    util.check_stats(out)
    util.check_episode_stats(out, [(src, sorted(expected))])
    util.check_video_timing(out)
    videos = tree_digest(src / "videos")
    assert videos and tree_digest(out / "videos") == videos  # copied, untouched


def frame_tasks(src: Path) -> dict[int, list[str]]:
    return {ep: f["task"] for ep, f in util.frames_by_episode(src).items()}


@pytest.mark.parametrize("name", ["v30", "v21"])
def test_one_task_for_every_episode_with_overrides(ray_address, sources, tmp_path, name):
    src = sources[name]
    before = tree_digest(src)
    out = tmp_path / "out"
    modify(src, out, {"set": "tidy the table", "episodes": {1: "zz last", 2: "a first"}})
    lengths = {ep: len(t) for ep, t in frame_tasks(src).items()}
    texts = {1: "zz last", 2: "a first"}
    check_retasked(out, src, {ep: [texts.get(ep, "tidy the table")] * n for ep, n in lengths.items()})
    assert util.tasks(out) == ["a first", "tidy the table", "zz last"]
    assert tree_digest(src) == before


@pytest.mark.parametrize("name", ["v30", "v21"])
def test_per_episode_tasks_keep_the_others_first_task(ray_address, sources, tmp_path, name):
    src = sources[name]
    out = tmp_path / "out"
    modify(src, out, {"episodes": {"0": "wipe"}})  # keys as strings, as LeRobot's CLI takes them
    expected = {ep: ["wipe"] * len(t) if ep == 0 else [t[0]] * len(t) for ep, t in frame_tasks(src).items()}
    check_retasked(out, src, expected)


def test_replacements_rename_and_merge_tasks(ray_address, sources, tmp_path):
    src = sources["v21"]  # tasks "place" (episodes 0, 2) and "push" (episode 1)
    out = tmp_path / "out"
    # one pass, longest key first: "push" wins over "pu", "place" over "la"
    modify(src, out, {"replace": {"pu": "no", "la": "xx", "place": "move", "push": "move"}})
    check_retasked(out, src, {ep: ["move"] * len(t) for ep, t in frame_tasks(src).items()})
    assert util.tasks(out) == ["move"]


def test_replacement_of_part_of_a_task(ray_address, sources, tmp_path):
    src = sources["v30"]  # "pick the cube" (episodes 0, 2), "place the cube" (1, 3)
    out = tmp_path / "out"
    modify(src, out, {"replace": {"the cube": "the red cube"}})
    expected = {ep: [t.replace("the cube", "the red cube") for t in texts] for ep, texts in frame_tasks(src).items()}
    check_retasked(out, src, expected)
    assert util.tasks(out) == ["pick the red cube", "place the red cube"]
    stats = json.loads((out / "meta/stats.json").read_text())["task_index"]
    assert stats["min"] == [0.0] and stats["max"] == [1.0]


def test_v21_output_of_a_v30_input(ray_address, sources, tmp_path):
    src = sources["v30"]
    out = tmp_path / "out"
    cfg = {"kind": "lerobot", "operation": "modify_tasks", "inputs": [{"path": str(src), "episodes": "1:3"}]}
    api.run(cfg | {"tasks": {"set": "one"}, "output": {"path": str(out), "format_version": "v2.1"}})
    assert util.tasks(out) == ["one"]
    assert [json.loads(line)["tasks"] for line in (out / "meta/episodes.jsonl").read_text().splitlines()] == [
        ["one"],
        ["one"],
    ]
    assert set(util.data(out)["task_index"].to_pylist()) == {0}
    util.check_episode_stats(out, [(src, [1, 2])])
    util.check_stats(out)
    util.check_video_timing(out)


def test_refusals_write_nothing(ray_address, sources, tmp_path):
    src = sources["v30"]
    out = tmp_path / "out"
    base = {
        "kind": "lerobot",
        "operation": "modify_tasks",
        "inputs": [{"path": str(src)}],
        "output": {"path": str(out)},
    }
    cases = [
        ({"episodes": {9: "x"}}, "has no \\(selected\\) episode 9"),
        ({"set": "  "}, "a task cannot be empty"),
        ({"episodes": {0: ""}}, "a task cannot be empty"),
        ({"set": "x", "replace": {"pick": "lift"}}, "cannot be combined"),
        ({"replace": {"drop": "lift"}}, "'drop' occurs in no task"),
        ({"replace": {"pick the cube": ""}}, "would become empty"),
        ({"replace": {"": "x"}}, "the text to replace cannot be empty"),
        ({}, "give `set`, `episodes` or `replace`"),
    ]
    for tasks, message in cases:
        assert_rejected(base | {"tasks": tasks}, message, [src], out)
    assert_rejected(base, "needs `tasks:`", [src], out)
    assert_rejected(base | {"operation": "merge", "tasks": {"set": "x"}}, "needs `tasks:`", [src], out)
    selected = base | {"inputs": [{"path": str(src), "episodes": [0, 1]}]}
    assert_rejected(selected | {"tasks": {"episodes": {2: "x"}}}, "no \\(selected\\) episode 2", [src], out)
    assert np.array_equal(util.data(src)["task_index"].to_numpy(), [0] * 12 + [1] * 9 + [0] * 15 + [1] * 10)
