"""The stats reduce on its own: pooled moments and mergeable quantiles against numpy on the whole data."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from raymerge.lerobot.stats import MAX_EXACT_VALUES, QUANTILES, Summary, column_values


def _pooled(parts: list[np.ndarray]) -> Summary:
    summary = Summary.of(parts[0])
    for p in parts[1:]:
        summary = summary.merge(Summary.of(p))
    return summary


@pytest.mark.parametrize("distinct", [50, 20 * MAX_EXACT_VALUES])
def test_pooled_stats_match_numpy(distinct):
    rng = np.random.default_rng(0)
    whole = np.concatenate(
        [rng.integers(0, distinct, size=(4000, 1)).astype(np.float64), rng.normal(3, 2, size=(4000, 1)) ** 3], axis=1
    )
    parts = np.array_split(whole, [100, 1500, 1501, 3300])
    stats = _pooled(parts).to_stats()
    assert stats["count"] == [4000]
    np.testing.assert_allclose(stats["mean"], whole.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats["std"], whole.std(0), rtol=1e-10)
    np.testing.assert_array_equal(stats["min"], whole.min(0))
    np.testing.assert_array_equal(stats["max"], whole.max(0))
    for name, q in QUANTILES.items():
        np.testing.assert_allclose(stats[name], np.quantile(whole, q, axis=0), rtol=1e-3, err_msg=name)


def test_few_distinct_values_give_exact_quantiles():
    x = np.arange(101, dtype=np.float64)[:, None]
    stats = _pooled([x[:30], x[30:]]).to_stats()
    assert [stats[n][0] for n in QUANTILES] == [np.quantile(x, q) for q in QUANTILES.values()]


def test_list_columns_become_rows_by_dimension():
    col = pa.chunked_array(
        [pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float32())), pa.array([[5.0, 6.0]], pa.list_(pa.float32()))]
    )
    np.testing.assert_array_equal(column_values(col), [[1, 2], [3, 4], [5, 6]])


def test_image_stats_pool_from_per_episode_stats():
    from raymerge.lerobot.metadata import pooled_visual

    rng = np.random.default_rng(1)
    eps = [rng.random((n, 3)) for n in (40, 7, 90)]
    stored = {
        "min": [e.min(0).reshape(3, 1, 1).tolist() for e in eps],
        "max": [e.max(0).reshape(3, 1, 1).tolist() for e in eps],
        "mean": [e.mean(0).reshape(3, 1, 1).tolist() for e in eps],
        "std": [e.std(0).reshape(3, 1, 1).tolist() for e in eps],
        "count": [[len(e)] for e in eps],
    }
    pooled = pooled_visual({name: pa.array(values) for name, values in stored.items()})
    out = pooled.to_stats(with_quantiles=False)
    # chunks of episodes pooled apart, then merged
    first, last = ({name: pa.array(values[a:b]) for name, values in stored.items()} for a, b in ((0, 2), (2, 3)))
    merged = pooled_visual(first).merge(pooled_visual(last)).to_stats(with_quantiles=False)
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
    assert pooled_visual({name: pa.array(values) for name, values in partial.items()}) is None


def test_per_episode_stats_at_once_equal_numpy_per_episode():
    from raymerge.lerobot.stats import episode_stats

    rng = np.random.default_rng(3)
    lengths = [1, 2, 3, 5, 100, 290, 7]
    x = np.concatenate([rng.normal(size=(n, 4)) ** 3 for n in lengths])
    x[:, 3] = np.round(x[:, 3])  # ties
    starts = np.cumsum([0, *lengths[:-1]])
    names, out = episode_stats(np.ascontiguousarray(x.T), starts)
    assert out.shape == (len(lengths), len(names), 4)
    for i, (s, n) in enumerate(zip(starts, lengths, strict=True)):
        ep = x[s : s + n]
        ref = {"min": ep.min(0), "max": ep.max(0), "mean": ep.mean(0), "std": ep.std(0), "count": np.full(4, n)}
        ref |= {name: np.quantile(ep, q, axis=0) for name, q in QUANTILES.items()}
        for j, name in enumerate(names):
            if name in QUANTILES or name in ("min", "max", "count"):  # numpy's interpolation, bit for bit
                np.testing.assert_array_equal(out[i, j], ref[name], err_msg=f"{name} of episode {i}")
            else:
                np.testing.assert_allclose(out[i, j], ref[name], rtol=1e-12, atol=1e-300, err_msg=name)


def test_data_results_merge_in_task_order_whatever_order_they_arrive():
    """stats.json must not depend on which write task finished first, and the per-episode stats files must be
    read in episode order."""
    from raymerge.lerobot.data import DataResult
    from raymerge.lerobot.metadata import Collected

    rng = np.random.default_rng(5)
    parts = [rng.normal(size=(n, 2)) ** 3 for n in (50, 3, 70, 11)]

    def result(i: int) -> DataResult:
        return DataResult(f"file-{i}", len(parts[i]), int(i != 1), {"x": Summary.of(parts[i])})

    in_order, shuffled = Collected(), Collected()
    for i in range(4):
        in_order.add_data(i, [result(i)], f"stats-{i}")
    for i in (2, 0, 3, 1):
        shuffled.add_data(i, [result(i)], f"stats-{i}")
    assert shuffled.files == in_order.files == ["file-0", "file-1", "file-2", "file-3"]
    assert shuffled.stats_files == in_order.stats_files == ["stats-0", "stats-2", "stats-3"]  # task 1: no episodes
    assert shuffled.summaries["x"].to_stats() == in_order.summaries["x"].to_stats()
    assert not shuffled.early


def _stats_batch(episodes: list[int]) -> pa.RecordBatch:
    values = [[10.0 * e, e] for e in episodes]  # min of two dimensions
    return pa.record_batch(
        {"episode_index": pa.array(episodes, pa.int64()), "stats/x/min": pa.array(values, pa.list_(pa.float64()))}
    )


@pytest.mark.parametrize("chunk", [1, 2, 4, 4096])
def test_episodes_without_rows_get_null_stats(chunk):
    """An episode with no frames has no stats: its row of every stats column is null, the others line up,
    however the stored batches and the chunks read back are cut."""
    from raymerge.lerobot.metadata import aligned_stats, ranges

    batches = [_stats_batch([1]), _stats_batch([4, 6, 7]), _stats_batch([8])]
    spans = ranges(10, chunk)
    tables = list(aligned_stats(batches, spans))
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
    from raymerge.lerobot.metadata import aligned_stats, ranges

    with pytest.raises(AssertionError, match=error):
        list(aligned_stats([_stats_batch(e) for e in episodes], ranges(10, 4)))
