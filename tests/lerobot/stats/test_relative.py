"""Relative-action windows and masks as LeRobot defines them, on small arrays worked out by hand."""

from __future__ import annotations

import numpy as np

from raymerge.lerobot.stats.relative import mask, windows


def test_mask_matches_joint_names_by_substring():
    action = {"shape": [3], "names": ["shoulder", "left_gripper", "wrist"]}
    assert mask(action, ["gripper"]).tolist() == [1.0, 0.0, 1.0]
    assert mask({"shape": [3], "names": {"motors": ["a", "gripper", "b"]}}, ["gripper"]).tolist() == [1.0, 0.0, 1.0]
    assert mask({"shape": [2], "names": None}, ["gripper"]).tolist() == [1.0, 1.0]  # unnamed: all relative
    assert mask(action, []).tolist() == [1.0, 1.0, 1.0]


def test_windows_stay_within_an_episode_and_subtract_the_first_state():
    actions = np.arange(10.0).reshape(5, 2)  # frames 0..4, action (2f, 2f + 1)
    states = np.full((5, 3), 100.0) + np.arange(5)[:, None]  # state wider than the action
    episodes = np.array([0, 0, 0, 1, 1])
    got = windows(actions, states, episodes, 2, np.array([1.0, 0.0]))
    # windows start at frames 0, 1 (episode 0) and 3 (episode 1); frame 2 -> 3 would cross episodes
    expected = [[0 - 100, 1], [2 - 100, 3], [2 - 101, 3], [4 - 101, 5], [6 - 103, 7], [8 - 103, 9]]
    assert got.tolist() == expected
    assert windows(actions, states, episodes, 6, np.ones(2)).shape == (0, 2)
