"""The column helpers every module shares: runs of equal values, interned codes, numeric Arrow columns, parts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from raymerge.errors import InvalidInput
from raymerge.lerobot.arrays import Interned, even_parts, numbers, run_starts, runs


def test_runs_of_equal_consecutive_values():
    values = np.array([3, 3, 1, 1, 1, 3, 7])
    assert run_starts(values).tolist() == [0, 2, 5, 6]
    starts, ends = runs(values)
    assert list(zip(starts.tolist(), ends.tolist(), strict=True)) == [(0, 2), (2, 5), (5, 6), (6, 7)]
    assert run_starts(np.array([5])).tolist() == [0]
    assert [r.tolist() for r in runs(np.zeros(0))] == [[], []]


def test_interned_codes_in_order_of_first_sight():
    codes = Interned()
    assert [codes.code(v) for v in ("b", "a", "b", ("t",), "a")] == [0, 1, 0, 2, 1]
    assert codes.values == ["b", "a", ("t",)]


def test_numbers_refuse_nulls_and_other_kinds_by_name():
    table = pa.table({"n": pa.array([1, 2, 3]).slice(1), "x": [None, 1], "s": ["a", "b"]})
    assert numbers(table, "n", np.int64, "here").tolist() == [2, 3]
    with pytest.raises(InvalidInput, match=r"here: 1 row\(s\) have no x"):
        numbers(table, "x", np.int64, "here")
    with pytest.raises(InvalidInput, match=r"here: s is not integer"):
        numbers(table, "s", np.int64, "here")


def test_even_parts_keep_order_and_never_leave_one_empty():
    assert even_parts(list(range(7)), 3) == [[0, 1], [2, 3], [4, 5, 6]]
    assert even_parts([1, 2], 8) == [[1], [2]]
    assert even_parts([], 4) == []
