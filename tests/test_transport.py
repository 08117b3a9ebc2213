"""Frames cross between Ray tasks as Arrow tables and come back as the same frames; other values as they are."""

from __future__ import annotations

import datetime
import decimal
import pickle

import polars as pl
import pyarrow as pa
import pytest

from raymerge.transport import ArrowFrame, pack, slices, unpack

FRAMES = {
    "lists and nulls": pl.DataFrame({"a": [1, None], "s": ["x", None], "l": [[["a"]], None], "b": [[b"x"], []]}),
    "categories": pl.DataFrame(
        {"c": pl.Series(["a", "b"], dtype=pl.Categorical), "e": pl.Series(["a", "a"], dtype=pl.Enum(["a", "b"]))}
    ),
    "scalars": pl.DataFrame(
        {
            "d": [datetime.datetime(2020, 1, 1)],
            "dec": pl.Series([decimal.Decimal("1.5")], dtype=pl.Decimal(10, 2)),
            "u": pl.Series([1], dtype=pl.UInt8),
            "arr": pl.Series([[1, 2]], dtype=pl.Array(pl.Int64, 2)),
            "st": [{"x": 1}],
        }
    ),
    "no rows": pl.DataFrame(schema={"k": pl.String, "n": pl.List(pl.Int32)}),
}


@pytest.mark.parametrize("name", list(FRAMES))
def test_a_frame_comes_back_equal_with_its_schema(name):
    df = FRAMES[name]
    packed = pack(df)
    assert isinstance(packed, ArrowFrame) and isinstance(packed.table, pa.Table)
    back = unpack(pickle.loads(pickle.dumps(packed, protocol=5)))
    assert back.schema == df.schema and back.equals(df)


def test_other_values_pass_as_they_are():
    table = pa.table({"a": [1]})
    for value in (1, "x", None, [pl.DataFrame({"a": [1]})], table):
        assert pack(value) is value and unpack(value) is value


def test_slices_are_stored_with_their_own_rows_only_and_come_back_equal():
    n = 200_000
    df = pl.DataFrame(
        {
            "key": [f"k/{i:09d}" for i in range(n)],
            "names": [["ids", "txt"]] * n,
            "data": [[[1, 2], None]] * n,
        }
    )
    bounds = [(0, 10), (10, 90_000), (199_990, n), (5, 5)]
    parts = slices(df, bounds)
    whole = len(pickle.dumps(pack(df), protocol=5))
    for (a, b), part in zip(bounds, parts, strict=True):
        assert part.is_sparse() == (b - a < n // 2)
        stored = pickle.dumps(part, protocol=5)
        assert len(stored) < whole * (b - a) / n + 64 * 1024  # not the whole frame's buffers
        for back in (unpack(pickle.loads(stored)), unpack(part)):  # through storage, or in this process
            assert back.schema == df.schema and back.equals(df[a:b])
