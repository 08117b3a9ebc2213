"""The parquet schemas raymerge writes, as LeRobot's own writers make them (`tests/lerobot/fixtures` holds what
those writers produce, with the versions that made them):

- v2.1 data files as LeRobot 0.3.3 writes them through `datasets` 3.x: vector features as
  `fixed_size_list<T>[N]` and `huggingface` schema metadata whose types are `datasets` 3.x ones (`Sequence`,
  `Value`, `Image`). LeRobot 0.3.3, the last to read v2.1, loads with `datasets` 3.6, which refuses the
  `List` type `datasets` >= 4 writes: carrying an input's metadata would break it.
- v3.0 data files as LeRobot 0.6's merge writes them: vectors as `list<T>`, no `huggingface` metadata (LeRobot
  >= 0.4 passes its own features when it loads, whatever the file says).
- v3.0 `meta/tasks.parquet` as LeRobot 0.6 writes it with pandas 2: `task` (the index) as `string`.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from raymerge.lerobot import formats

HF_KEY = b"huggingface"


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def comparable(t: pa.DataType) -> pa.DataType:
    """A column type with the differences the output schema irons out removed (fixed-size vs plain lists,
    string vs large_string): two inputs whose types compare equal here can be merged."""
    if _is_list(t):
        return pa.list_(comparable(t.value_type))
    if pa.types.is_large_string(t):
        return pa.string()
    return t


def _vector_length(feature: dict[str, Any] | None) -> int | None:
    """N for a numeric feature of shape (N,) with N > 1, else None."""
    if not feature or feature.get("dtype") in (*formats.CAMERA_DTYPES, "string"):
        return None
    shape = list(feature.get("shape") or [])
    return int(shape[0]) if len(shape) == 1 and shape[0] != 1 else None


def data_schema(source: pa.Schema, features: dict[str, dict[str, Any]], version: str) -> pa.Schema:
    """The output data files' schema: the inputs' columns, typed and described as LeRobot writes `version`."""
    fields = []
    for f in source:
        n = _vector_length(features.get(f.name))
        if n is not None and _is_list(f.type):
            value = f.type.value_type
            f = f.with_type(pa.list_(value, n) if version == formats.V21 else pa.list_(value))
        elif pa.types.is_large_string(f.type):
            f = f.with_type(pa.string())
        fields.append(f.remove_metadata())
    if version != formats.V21:
        return pa.schema(fields)
    described = {f.name: hf_feature(features.get(f.name), f.type) for f in fields}
    metadata = {HF_KEY: json.dumps({"info": {"features": described}}).encode()}
    return pa.schema(fields, metadata=metadata)


def hf_feature(feature: dict[str, Any] | None, arrow_type: pa.DataType) -> dict[str, Any]:
    """A column's `datasets` 3.x feature, as LeRobot 0.3.3's `get_hf_features_from_features` makes it."""
    if feature is None:  # a column info.json does not describe: its own type
        return {"dtype": str(arrow_type), "_type": "Value"}
    dtype = feature["dtype"]
    if dtype == "image":
        return {"_type": "Image"}
    shape = [int(s) for s in feature.get("shape") or [1]]
    if shape == [1]:
        return {"dtype": dtype, "_type": "Value"}
    if len(shape) == 1:
        return {"feature": {"dtype": dtype, "_type": "Value"}, "length": shape[0], "_type": "Sequence"}
    return {"shape": shape, "dtype": dtype, "_type": f"Array{len(shape)}D"}


def tasks_table(tasks: list[str]) -> pa.Table:
    """`meta/tasks.parquet` as LeRobot writes it with pandas 2: `task_index`, then the task string as the
    named index, typed `string`."""
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    schema = pa.schema(
        [("task_index", pa.int64()), ("task", pa.string())], metadata={b"pandas": json.dumps(pandas_meta).encode()}
    )
    return pa.table([pa.array(range(len(tasks)), pa.int64()), pa.array(tasks, pa.string())], schema=schema)
