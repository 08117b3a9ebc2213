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
    out = pooled_visual({name: pa.array(values) for name, values in stored.items()})
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
    """stats.json must not depend on which write task finished first."""
    from raymerge.lerobot.data import DataResult, EpisodeStats
    from raymerge.lerobot.metadata import Collected, numeric_columns

    rng = np.random.default_rng(5)
    parts = [rng.normal(size=(n, 2)) ** 3 for n in (50, 3, 70, 11)]

    def result(i: int) -> DataResult:
        per_episode = EpisodeStats(np.array([i]), ("min",), parts[i].min(0)[None, None], [("x", 0, 2)])
        return DataResult(f"file-{i}", len(parts[i]), per_episode, {"x": Summary.of(parts[i])})

    in_order, shuffled = Collected(), Collected()
    for i in range(4):
        in_order.add_data(i, [result(i)])
    for i in (2, 0, 3, 1):
        shuffled.add_data(i, [result(i)])
    assert shuffled.files == in_order.files == ["file-0", "file-1", "file-2", "file-3"]
    assert numeric_columns(shuffled, 4)[("x", "min")].to_pylist() == [p.min(0).tolist() for p in parts]
    assert shuffled.summaries["x"].to_stats() == in_order.summaries["x"].to_stats()
    assert not shuffled.early


@pytest.mark.parametrize("chunk", [1, 2, 4096])
def test_episodes_without_rows_get_null_stats(monkeypatch, chunk):
    """An episode with no frames has no stats: its row of every stats column is null, the others line up,
    however the results are cut into Arrow chunks."""
    from raymerge.lerobot import metadata
    from raymerge.lerobot.data import DataResult, EpisodeStats

    monkeypatch.setattr(metadata, "STATS_CHUNK", chunk)

    def result(task: int, episodes: list[int]) -> DataResult:
        values = np.array([[[10.0 * e, e]] for e in episodes])  # min of two dimensions
        per_episode = EpisodeStats(np.array(episodes, dtype=np.int64), ("min",), values, [("x", 0, 2)])
        return DataResult(f"file-{task}", len(episodes), per_episode, {})

    got = metadata.Collected()
    got.add_data(1, [result(1, [4, 6])])
    got.add_data(0, [result(0, [1]), result(0, [])])
    got.add_data(2, [result(2, [7])])
    column = metadata.numeric_columns(got, 9)[("x", "min")]
    assert column.type == pa.list_(pa.float64())
    assert column.to_pylist() == [None, [10.0, 1.0], None, None, [40.0, 4.0], None, [60.0, 6.0], [70.0, 7.0], None]
