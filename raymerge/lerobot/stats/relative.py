"""Relative-action stats as LeRobot 0.6's `recompute_stats --operation.relative_action true` defines them (its
`compute_relative_action_stats`): every window of `chunk_size` consecutive frames within one episode, each
action of the window minus `observation.state` at the window's first frame, on the action dimensions whose
name contains none of the excluded joint names (the others stay absolute). LeRobot writes their stats in
place of `action`'s in `meta/stats.json` (the per-episode stats stay absolute) and policies that use relative
actions read them from there.

Here each data task summarises the windows of its own episodes (an episode never spans two data files) and the
driver pools the summaries: moments exact, quantiles as exact as `Summary` keeps them, where LeRobot's
running histogram approximates them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from raymerge.lerobot.stats.summary import Summary, column_values


def _names(feature: dict[str, Any]) -> list[str] | None:
    """A feature's per-dimension names: a list, or the one list of a {"motors": [...]} mapping."""
    names = feature.get("names")
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    return [str(n) for n in names] if isinstance(names, list) else None


def mask(action: dict[str, Any], exclude_joints: list[str]) -> np.ndarray:
    """(dims,) 1.0 for each action dimension made relative, 0.0 for those named like an excluded joint (every
    dimension is relative when the action's dimensions have no names)."""
    width = int(np.prod(action["shape"]))
    names = _names(action)
    if names is None or len(names) != width:
        return np.ones(width)
    return np.array([0.0 if any(j in n for j in exclude_joints) else 1.0 for n in names])


def windows(
    actions: np.ndarray, states: np.ndarray, episodes: np.ndarray, chunk_size: int, keep: np.ndarray
) -> np.ndarray:
    """(windows * chunk_size, dims) relative actions of every window that stays within one episode, for
    frames with each episode's rows together (`episodes` their episode_index)."""
    n = len(episodes)
    if n < chunk_size:
        return np.empty((0, actions.shape[1]))
    starts = np.arange(n - chunk_size + 1)
    starts = starts[episodes[starts] == episodes[starts + chunk_size - 1]]
    frames = starts[:, None] + np.arange(chunk_size)[None, :]
    width = actions.shape[1]
    out = actions[frames] - (states[starts, :width] * keep)[:, None, :]
    return out.reshape(-1, width)


def summary(table: pa.Table, chunk_size: int, keep: np.ndarray, shape: tuple[int, ...]) -> Summary | None:
    """The mergeable summary of a data file's relative-action windows (None if no episode is long enough)."""
    episodes = table["episode_index"].to_numpy()
    actions = column_values(table["action"])
    x = windows(actions, column_values(table["observation.state"]), episodes, chunk_size, keep)
    return Summary.of(x, shape) if len(x) else None
