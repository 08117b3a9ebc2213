"""Exact statistics by map-reduce: mergeable summaries (per file in the write tasks, pooled on the driver)
and exact per-episode statistics computed all at once.

Moments are pooled with Chan's parallel formulas (exact up to float rounding); min/max elementwise.
Quantiles come from a mergeable summary: each dimension keeps its distinct values with counts while
there are few of them (then quantiles equal numpy's linear-interpolation quantiles exactly); beyond
`MAX_EXACT_VALUES` the values are snapped to logarithmic buckets of relative width `RELATIVE_ACCURACY`,
so memory stays bounded and every quantile stays within that relative error of the exact one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymerge.lerobot.arrays import run_starts

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
MOMENTS = ("min", "max", "mean", "std", "count")
MAX_EXACT_VALUES = 4096
RELATIVE_ACCURACY = 2e-4
_LOG_GAMMA = float(np.log1p(2 * RELATIVE_ACCURACY))
_TINY = 1e-30


def _flat(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A numeric (possibly list-valued) column as (rows, dims), in its own dtype."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    rows = len(arr)
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        arr = pc.list_flatten(arr)
    values = arr.to_numpy(zero_copy_only=False)
    return values.reshape(rows, -1) if rows else values.reshape(0, 1)


def column_values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A numeric (possibly list-valued) column as float64 (rows, dims)."""
    return _flat(column).astype(np.float64, copy=False)


def feature_matrix(table: pa.Table, keys: list[str]) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
    """The features' dimensions as rows of one float64 (dims, rows) matrix, each contiguous so that per-episode
    reductions run along memory (cast while copied in); and each feature's (key, first, end) rows."""
    raw = [_flat(table[key]) for key in keys]
    bounds = np.cumsum([0] + [r.shape[1] for r in raw]).tolist()
    matrix = np.empty((bounds[-1], table.num_rows))
    for r, a, b in zip(raw, bounds[:-1], bounds[1:], strict=True):
        matrix[a:b] = r.T
    return matrix, list(zip(keys, bounds[:-1], bounds[1:], strict=True))


def snap(values: np.ndarray) -> np.ndarray:
    """Round each value to its logarithmic bucket's centre (relative error <= RELATIVE_ACCURACY)."""
    mag = np.abs(values)
    safe = np.where(mag > _TINY, mag, 1.0)
    snapped = np.exp(np.round(np.log(safe) / _LOG_GAMMA) * _LOG_GAMMA)
    return np.where(mag > _TINY, np.sign(values) * snapped, 0.0)


def _distinct(values: np.ndarray, counts: np.ndarray | None, rounded: bool) -> tuple[np.ndarray, np.ndarray, bool]:
    """Sorted distinct values and their counts (`counts` None: one each), snapped to buckets when `rounded`
    or past MAX_EXACT_VALUES. A sort and run boundaries: no inverse index, and snapping keeps the order."""
    if counts is None:
        values, counts = np.sort(values), np.ones(len(values), dtype=np.int64)
    else:
        order = np.argsort(values, kind="stable")
        values, counts = values[order], counts[order]
    if rounded:
        values = snap(values)
        if len(values) > 1 and not (values[1:] >= values[:-1]).all():  # exp is monotonic; guard all the same
            order = np.argsort(values, kind="stable")
            values, counts = values[order], counts[order]
    starts = run_starts(values)
    values, counts = values[starts], np.add.reduceat(counts, starts) if len(starts) else counts[:0]
    if not rounded and len(values) > MAX_EXACT_VALUES:
        return _distinct(values, counts, True)
    return values, counts, rounded


def quantile(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """numpy's default ("linear") quantile of the multiset given as sorted distinct values and counts."""
    total = int(counts.sum())
    cum = np.cumsum(counts)
    h = (total - 1) * q
    lo = int(np.floor(h))
    hi = min(lo + 1, total - 1)
    v_lo = values[np.searchsorted(cum, lo, side="right")]
    v_hi = values[np.searchsorted(cum, hi, side="right")]
    return float(v_lo + (h - lo) * (v_hi - v_lo))


@dataclass
class Summary:
    """Mergeable statistics of one feature: moments, extremes and per-dimension value counts."""

    shape: tuple[int, ...]
    count: int
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray
    values: list[np.ndarray] | None = None
    counts: list[np.ndarray] | None = None
    rounded: bool = False
    # Parts known only by their stats: the sum of count x quantile, (quantiles, dims) (LeRobot's pooling).
    weighted_quantiles: np.ndarray | None = None

    @classmethod
    def of(cls, x: np.ndarray, shape: tuple[int, ...] | None = None) -> Summary:
        """Summary of (rows, dims) data."""
        mean = x.mean(axis=0)
        values, counts, rounded = [], [], False
        for d in range(x.shape[1]):
            v, c, r = _distinct(x[:, d], None, False)
            values.append(v)
            counts.append(c)
            rounded = rounded or r
        summary = cls(
            shape or (x.shape[1],),
            len(x),
            mean,
            ((x - mean) ** 2).sum(axis=0),
            x.min(axis=0),
            x.max(axis=0),
            values,
            counts,
            False,
        )
        return summary._snapped() if rounded else summary

    @classmethod
    def pooled(
        cls,
        shape: tuple[int, ...],
        count: np.ndarray,
        mean: np.ndarray,
        std: np.ndarray,
        lo: np.ndarray,
        hi: np.ndarray,
        quantiles: np.ndarray | None = None,
    ) -> Summary:
        """The summary of parts known only by their (parts, dims) moments and (parts,) counts: pooling stored
        image/video stats without decoding. Mean and variance by the pooled formulas, exact up to rounding;
        `quantiles` (quantiles, parts, dims), when every part has them, are averaged weighted by count, as
        LeRobot pools them (an approximation: quantiles do not pool exactly)."""
        n = int(count.sum())
        w = count[:, None]
        pooled_mean = (w * mean).sum(axis=0) / max(n, 1)
        m2 = (w * std**2).sum(axis=0) + (w * (mean - pooled_mean) ** 2).sum(axis=0)
        weighted = (quantiles * w[None]).sum(axis=1) if quantiles is not None else None
        return cls(shape, n, pooled_mean, m2, lo.min(axis=0), hi.max(axis=0), weighted_quantiles=weighted)

    def with_histogram(self, histogram: np.ndarray, bins: np.ndarray) -> Summary:
        """Itself with exact quantiles from (dims, bins) counts of the values `bins` (decoded pixels)."""
        self.values = [bins[h > 0] for h in histogram]
        self.counts = [h[h > 0].astype(np.int64) for h in histogram]
        self.weighted_quantiles = None
        return self

    def _snapped(self) -> Summary:
        """Itself with every dimension's values snapped to buckets (bounded memory from here on)."""
        assert self.values is not None and self.counts is not None
        pairs = [_distinct(v, c, True) for v, c in zip(self.values, self.counts, strict=True)]
        self.values = [p[0] for p in pairs]
        self.counts = [p[1] for p in pairs]
        self.rounded = True
        return self

    def merge(self, other: Summary) -> Summary:
        """The summary of both parts' values together (Chan's formulas; value counts added)."""
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n) if n else self.mean
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n if n else 0.0)
        values = counts = None
        rounded = self.rounded or other.rounded
        if self.values is not None and other.values is not None:
            assert self.counts is not None and other.counts is not None
            values, counts = [], []
            for d in range(len(self.values)):
                v, c, r = _distinct(
                    np.concatenate([self.values[d], other.values[d]]),
                    np.concatenate([self.counts[d], other.counts[d]]),
                    rounded,
                )
                values.append(v)
                counts.append(c)
                rounded = rounded or r
        weighted = None
        if self.weighted_quantiles is not None and other.weighted_quantiles is not None:
            weighted = self.weighted_quantiles + other.weighted_quantiles
        merged = Summary(
            self.shape,
            n,
            mean,
            m2,
            np.minimum(self.min, other.min),
            np.maximum(self.max, other.max),
            values,
            counts,
            rounded,
            weighted,
        )
        return merged._snapped() if rounded and values is not None else merged

    def to_stats(self, with_quantiles: bool = True) -> dict[str, Any]:
        """LeRobot's stats layout: arrays shaped like the feature's stats, count as a 1-element list."""

        def shaped(a: np.ndarray) -> list:
            return np.asarray(a, dtype=np.float64).reshape(self.shape).tolist()

        out: dict[str, Any] = {
            "min": shaped(self.min),
            "max": shaped(self.max),
            "mean": shaped(self.mean),
            "std": shaped(np.sqrt(np.maximum(self.m2 / max(self.count, 1), 0.0))),
            "count": [self.count],
        }
        if with_quantiles and self.values is not None and self.counts is not None and self.count:
            for name, q in QUANTILES.items():
                out[name] = shaped(np.array([quantile(v, c, q) for v, c in zip(self.values, self.counts, strict=True)]))
        elif with_quantiles and self.weighted_quantiles is not None and self.count:
            for name, row in zip(QUANTILES, self.weighted_quantiles / self.count, strict=True):
                out[name] = shaped(row)
        return out


def exact_stats(x: np.ndarray, with_quantiles: bool = True) -> dict[str, Any]:
    """Stats of one (rows, dims) array, quantiles straight from numpy: for one large set of values (decoded
    video frames, a test's reference), where partitioning beats `episode_stats`' per-episode sort."""
    out: dict[str, Any] = {
        "min": x.min(axis=0).tolist(),
        "max": x.max(axis=0).tolist(),
        "mean": x.mean(axis=0).tolist(),
        "std": x.std(axis=0).tolist(),
        "count": [len(x)],
    }
    if with_quantiles:
        for name, row in zip(QUANTILES, np.quantile(x, list(QUANTILES.values()), axis=0), strict=True):
            out[name] = row.tolist()
    return out


def episode_stats(
    xt: np.ndarray, starts: np.ndarray, with_quantiles: bool = True
) -> tuple[tuple[str, ...], np.ndarray]:
    """`exact_stats` of every episode at once, for (dims, rows) values whose episodes start at `starts`:
    stat names and a (episodes, stats, dims) array ("count" repeated over dims). Moments by `reduceat`;
    quantiles from each episode's sorted values with numpy's linear interpolation, so they equal np.quantile."""
    names = MOMENTS + (tuple(QUANTILES) if with_quantiles else ())
    out = np.empty((len(starts), len(names), xt.shape[0]))
    if not len(starts):
        return names, out
    n = np.diff(np.r_[starts, xt.shape[1]])
    out[:, 0] = np.minimum.reduceat(xt, starts, axis=1).T
    out[:, 1] = np.maximum.reduceat(xt, starts, axis=1).T
    mean = np.add.reduceat(xt, starts, axis=1) / n
    out[:, 2] = mean.T
    dev = np.repeat(mean, n, axis=1)
    np.subtract(xt, dev, out=dev)
    np.square(dev, out=dev)
    out[:, 3] = np.sqrt(np.add.reduceat(dev, starts, axis=1) / n).T
    out[:, 4] = n[:, None]
    if with_quantiles:
        qs = np.fromiter(QUANTILES.values(), dtype=np.float64)
        for i, (s, k) in enumerate(zip(starts.tolist(), n.tolist(), strict=True)):
            out[i, 5:] = _linear_quantiles(np.sort(xt[:, s : s + k], axis=1), qs).T
    return names, out


def _linear_quantiles(sorted_values: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """numpy's default quantiles of (dims, k) values sorted along k, with its own two-sided interpolation:
    (dims, len(qs))."""
    v = (sorted_values.shape[1] - 1) * qs
    lo = np.floor(v).astype(np.intp)
    hi = np.minimum(lo + 1, sorted_values.shape[1] - 1)
    gamma = v - lo
    a, b = sorted_values[:, lo], sorted_values[:, hi]
    diff = b - a
    out = a + diff * gamma
    np.subtract(b, diff * (1 - gamma), out=out, where=np.broadcast_to(gamma >= 0.5, out.shape))
    return out


def merge_all(summaries: dict[str, Summary], more: dict[str, Summary]) -> dict[str, Summary]:
    """Fold one partial result into the running one, feature by feature."""
    for key, s in more.items():
        summaries[key] = summaries[key].merge(s) if key in summaries else s
    return summaries


def dataset_stats(features: list[str], summaries: dict[str, Summary], pooled: dict[str, Summary | None]) -> dict:
    """`meta/stats.json`, in feature order: numeric features from the data's summaries, cameras pooled from
    per-episode stats (`Summary.pooled`; exact quantiles where decoded pixels were counted); a feature with
    neither is left out."""
    out: dict[str, Any] = {}
    for key in features:
        if key in summaries:
            out[key] = summaries[key].to_stats(with_quantiles=True)
        elif (part := pooled.get(key)) is not None:
            out[key] = part.to_stats(with_quantiles=True)
    return out
