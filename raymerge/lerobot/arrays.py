"""Helpers for metadata held as columns (numpy arrays) rather than objects: runs of equal values, codes for
repeated values, Arrow numeric columns without pandas, and work cut into even parts."""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymerge.errors import InvalidInput

T = TypeVar("T")


def run_starts(values: np.ndarray) -> np.ndarray:
    """Where each run of equal consecutive values starts (episodes in a frame column, sources in an output
    order, equal values in a sorted column)."""
    if not len(values):
        return np.zeros(0, dtype=np.intp)
    return np.flatnonzero(np.r_[True, values[1:] != values[:-1]])


def runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and (exclusive) ends of the runs of equal consecutive values."""
    starts = run_starts(values)
    return starts, np.append(starts[1:], len(values)).astype(np.int64) if len(values) else starts.astype(np.int64)


class Interned:
    """Codes for repeated values (file paths, task lists): each value stored once, episodes hold its code."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self._codes: dict[Any, int] = {}

    def code(self, value: Any) -> int:
        """The value's code, given on first sight in order."""
        found = self._codes.get(value)
        if found is None:
            found = self._codes[value] = len(self.values)
            self.values.append(value)
        return found


def numbers(table: pa.Table, name: str, dtype: type[np.number], where: str) -> np.ndarray:
    """A numeric column as a numpy array, read from its Arrow buffer (pyarrow's to_numpy imports pandas, 0.2 s
    of a fresh process that a plan would wait for); nulls and values of another kind are refused by name."""
    try:
        arr = pc.cast(table[name], pa.from_numpy_dtype(dtype)).combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        kind = "integer" if np.issubdtype(dtype, np.integer) else "a number"
        raise InvalidInput(f"{where}: {name} is not {kind}: {e}") from None
    if arr.null_count:
        raise InvalidInput(f"{where}: {arr.null_count} row(s) have no {name}")
    if not len(arr):
        return np.zeros(0, dtype=dtype)
    size = np.dtype(dtype).itemsize
    return np.frombuffer(arr.buffers()[1], dtype=dtype, count=len(arr), offset=arr.offset * size)


def even_parts(items: list[T], n: int) -> list[list[T]]:
    """At most n contiguous, nearly equal parts of `items`, in order: how work is cut into tasks."""
    n = max(1, min(n, len(items)))
    bounds = np.linspace(0, len(items), n + 1).astype(int)
    return [items[bounds[i] : bounds[i + 1]] for i in range(n) if bounds[i] < bounds[i + 1]]
