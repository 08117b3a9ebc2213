"""Exact statistics by map-reduce: per-file summaries in the write tasks, pooled on the driver.

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

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
MOMENTS = ("min", "max", "mean", "std", "count")
MAX_EXACT_VALUES = 4096
RELATIVE_ACCURACY = 2e-4
_LOG_GAMMA = float(np.log1p(2 * RELATIVE_ACCURACY))
_TINY = 1e-30


def column_values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A numeric (possibly list-valued) column as float64 (rows, dims)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    rows = len(arr)
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        arr = pc.list_flatten(arr)
    values = arr.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return values.reshape(rows, -1) if rows else values.reshape(0, 1)


def snap(values: np.ndarray) -> np.ndarray:
    """Round each value to its logarithmic bucket's centre (relative error <= RELATIVE_ACCURACY)."""
    mag = np.abs(values)
    safe = np.where(mag > _TINY, mag, 1.0)
    snapped = np.exp(np.round(np.log(safe) / _LOG_GAMMA) * _LOG_GAMMA)
    return np.where(mag > _TINY, np.sign(values) * snapped, 0.0)


def _distinct(values: np.ndarray, counts: np.ndarray, rounded: bool) -> tuple[np.ndarray, np.ndarray, bool]:
    if rounded:
        values = snap(values)
    uniq, inverse = np.unique(values, return_inverse=True)
    if not rounded and len(uniq) > MAX_EXACT_VALUES:
        return _distinct(uniq, np.bincount(inverse, weights=counts).astype(np.int64), True)
    return uniq, np.bincount(inverse, weights=counts, minlength=len(uniq)).astype(np.int64), rounded


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

    @classmethod
    def of(cls, x: np.ndarray, shape: tuple[int, ...] | None = None) -> Summary:
        """Summary of (rows, dims) data."""
        mean = x.mean(axis=0)
        values, counts, rounded = [], [], False
        for d in range(x.shape[1]):
            v, c, r = _distinct(x[:, d], np.ones(len(x), dtype=np.int64), False)
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
    def from_stats(cls, stats: dict[str, Any]) -> Summary:
        """A summary from stored min/max/mean/std/count (pooling image/video stats without decoding)."""
        mean = np.asarray(stats["mean"], dtype=np.float64)
        count = int(np.asarray(stats["count"]).reshape(-1)[0])
        std = np.asarray(stats["std"], dtype=np.float64).reshape(-1)
        return cls(
            mean.shape,
            count,
            mean.reshape(-1),
            std**2 * count,
            np.asarray(stats["min"], dtype=np.float64).reshape(-1),
            np.asarray(stats["max"], dtype=np.float64).reshape(-1),
        )

    def _snapped(self) -> Summary:
        assert self.values is not None and self.counts is not None
        pairs = [_distinct(v, c, True) for v, c in zip(self.values, self.counts, strict=True)]
        self.values = [p[0] for p in pairs]
        self.counts = [p[1] for p in pairs]
        self.rounded = True
        return self

    def merge(self, other: Summary) -> Summary:
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
        return out


def exact_stats(x: np.ndarray, with_quantiles: bool = True) -> dict[str, Any]:
    """Stats of one episode's (rows, dims) values, quantiles straight from numpy."""
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


def merge_all(summaries: dict[str, Summary], more: dict[str, Summary]) -> dict[str, Summary]:
    """Fold one partial result into the running one, feature by feature."""
    for key, s in more.items():
        summaries[key] = summaries[key].merge(s) if key in summaries else s
    return summaries
