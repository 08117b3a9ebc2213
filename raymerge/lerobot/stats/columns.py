"""Per-episode stats as LeRobot stores them: v3.0 episodes files hold one `stats/<feature>/<stat>` column of
lists per feature and stat; v2.1 `episodes_stats.jsonl` nests the same as {feature: {stat: value}}."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from raymerge.lerobot.formats import CAMERA_DTYPES

# The camera stats table of a source without episodes: only its key column.
NO_CAMERA_STATS = pa.schema([("episode_index", pa.int64())])


def stat_of(column: str) -> tuple[str, str]:
    """`stats/<feature>/<stat>` -> (feature, stat); feature names may hold slashes, stat names do not."""
    feature, name = column[len("stats/") :].rsplit("/", 1)
    return feature, name


def is_stat_of(column: str, features: set[str] | dict[str, Any]) -> bool:
    """Whether `column` is a stats column of one of `features`."""
    return column.startswith("stats/") and stat_of(column)[0] in features


def is_camera_stat(column: str, features: dict[str, dict[str, Any]]) -> bool:
    """Whether a `stats/<feature>/<stat>` column holds an image or video feature's stats: the only stats read
    from a source (numeric ones are recomputed from the data)."""
    return is_stat_of(column, features) and features[stat_of(column)[0]].get("dtype") in CAMERA_DTYPES


def flat_stats(stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{feature: {stat: v}} -> {"stats/feature/stat": v}, the v3.0 episodes columns."""
    return {f"stats/{feat}/{name}": value for feat, d in stats.items() for name, value in d.items()}


def stat_type(name: str) -> pa.DataType:
    """What pyarrow infers for LeRobot's stats lists: counts are integers."""
    return pa.list_(pa.int64() if name == "count" else pa.float64())


def list_column(rows: np.ndarray, name: str) -> pa.Array:
    """(n, k) values of one stat as a list column of its type."""
    n, k = rows.shape
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    values = pa.array(np.ascontiguousarray(rows).reshape(-1)).cast(stat_type(name).value_type)
    return pa.ListArray.from_arrays(offsets, values)
