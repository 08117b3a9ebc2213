"""An output's per-episode stats read back a chunk at a time: camera stats pooled from stored ones, episodes
without rows, and stats that do not line up refused."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from raymerge.lerobot.stats.chunks import aligned_stats, pooled_camera_stats, ranges


def test_image_stats_pool_from_per_episode_stats():
    rng = np.random.default_rng(1)
    eps = [rng.random((n, 3)) for n in (40, 7, 90)]
    stored = {
        "min": [e.min(0).reshape(3, 1, 1).tolist() for e in eps],
        "max": [e.max(0).reshape(3, 1, 1).tolist() for e in eps],
        "mean": [e.mean(0).reshape(3, 1, 1).tolist() for e in eps],
        "std": [e.std(0).reshape(3, 1, 1).tolist() for e in eps],
        "count": [[len(e)] for e in eps],
    }
    pooled = pooled_camera_stats({name: pa.array(values) for name, values in stored.items()})
    out = pooled.to_stats(with_quantiles=False)
    # chunks of episodes pooled apart, then merged
    first, last = ({name: pa.array(values[a:b]) for name, values in stored.items()} for a, b in ((0, 2), (2, 3)))
    merged = pooled_camera_stats(first).merge(pooled_camera_stats(last)).to_stats(with_quantiles=False)
    for name in ("mean", "std", "min", "max"):
        np.testing.assert_allclose(merged[name], out[name], rtol=1e-12)
    assert merged["count"] == out["count"]
    whole = np.concatenate(eps)
    np.testing.assert_allclose(np.asarray(out["mean"]).reshape(3), whole.mean(0), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(out["std"]).reshape(3), whole.std(0), rtol=1e-10)
    np.testing.assert_array_equal(np.asarray(out["min"]).reshape(3), whole.min(0))
    np.testing.assert_array_equal(np.asarray(out["max"]).reshape(3), whole.max(0))
    assert np.asarray(out["min"]).shape == (3, 1, 1) and out["count"] == [137]
    # an episode without stored stats leaves the feature without pooled stats, rather than wrong ones
    partial = stored | {"std": [*stored["std"][:2], None]}
    assert pooled_camera_stats({name: pa.array(values) for name, values in partial.items()}) is None


def _stats_batch(episodes: list[int]) -> pa.RecordBatch:
    values = [[10.0 * e, e] for e in episodes]  # min of two dimensions
    return pa.record_batch(
        {"episode_index": pa.array(episodes, pa.int64()), "stats/x/min": pa.array(values, pa.list_(pa.float64()))}
    )


@pytest.mark.parametrize("chunk", [1, 2, 4, 4096])
def test_episodes_without_rows_get_null_stats(chunk):
    """An episode with no frames has no stats: its row of every stats column is null, the others line up,
    however the stored batches and the chunks read back are cut."""
    record_batches = [_stats_batch([1]), _stats_batch([4, 6, 7]), _stats_batch([8])]
    spans = ranges(10, chunk)
    tables = list(aligned_stats(record_batches, spans))
    assert [t.num_rows for t in tables] == [b - a for a, b in spans]
    column = pa.concat_tables(tables)["stats/x/min"]
    assert column.type == pa.list_(pa.float64())
    expected = [None, [10.0, 1.0], None, None, [40.0, 4.0], None, [60.0, 6.0], [70.0, 7.0], [80.0, 8.0], None]
    assert column.to_pylist() == expected
    assert list(aligned_stats([], spans)) == [None] * len(spans)  # no episode has rows


@pytest.mark.parametrize(
    ("episodes", "error"), [([[2, 3], [1]], "out of order"), ([[0, 0]], "out of order"), ([[0, 12]], "past the last")]
)
def test_episode_stats_out_of_order_are_refused(episodes, error):
    """Stats that do not line up with the episodes would be written to the wrong rows: that is a bug, raised."""
    with pytest.raises(AssertionError, match=error):
        list(aligned_stats([_stats_batch(e) for e in episodes], ranges(10, 4)))
