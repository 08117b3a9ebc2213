"""Frames cross between Ray tasks as Arrow tables and come back as the same frames; other values as they are."""

from __future__ import annotations

import datetime
import decimal
import pickle

import polars as pl
import pyarrow as pa
import pytest

from raymerge.transport import ArrowFrame, pack, unpack

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
