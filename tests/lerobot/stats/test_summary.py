"""The stats reduce on its own: pooled moments and mergeable quantiles against numpy on the whole data, and
exact per-episode stats computed all at once."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from raymerge.lerobot.stats.summary import MAX_EXACT_VALUES, QUANTILES, Summary, column_values, episode_stats


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


def test_per_episode_stats_at_once_equal_numpy_per_episode():
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
