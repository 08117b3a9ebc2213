"""Hugging Face `features` for whole-row merges: what each column is, whether sources can be merged, and how
the merged schema is described to `datasets`.

A feature is kept in `datasets`' JSON form (`{"dtype": "int64", "_type": "Value"}`, a dict of sub-features for
a struct), so that sources written by `datasets` keep what their schema metadata says (class labels, images)
and outputs carry metadata `datasets` reads back. Alignment follows `datasets`' concatenate/interleave rules
(`_check_if_features_can_be_aligned`, `_align_features`): a column keeps one type across sources, a column that
is all null in a source takes the other sources' type, structs merge by field, and columns missing from a
source are filled with nulls.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from raymerge.errors import InvalidInput

Feature = dict[str, Any]
Features = dict[str, Feature]

_VALUE_TYPES = ("Value", "List", "LargeList", "Sequence")


def arrow_feature(t: pa.DataType) -> Feature:
    """The feature `datasets` derives from an Arrow type (`generate_from_arrow_type`)."""
    if pa.types.is_struct(t):
        return {t.field(i).name: arrow_feature(t.field(i).type) for i in range(t.num_fields)}
    if pa.types.is_fixed_size_list(t):
        return {"feature": arrow_feature(t.value_type), "length": t.list_size, "_type": "List"}
    if pa.types.is_list(t):
        return {"feature": arrow_feature(t.value_type), "_type": "List"}
    if pa.types.is_large_list(t):
        return {"feature": arrow_feature(t.value_type), "_type": "LargeList"}
    if pa.types.is_dictionary(t):
        return arrow_feature(t.value_type)
    return {"dtype": _dtype(t), "_type": "Value"}


def _dtype(t: pa.DataType) -> str:
    """`datasets`' dtype name of a scalar Arrow type (`_arrow_to_datasets_dtype`)."""
    names = {"bool": "bool", "halffloat": "float16", "float": "float32", "double": "float64"}
    s = str(t)
    if s in names:
        return names[s]
    if pa.types.is_date32(t):
        return "date32"
    if pa.types.is_date64(t):
        return "date64"
    if pa.types.is_timestamp(t):
        return f"timestamp[{t.unit}, tz={t.tz}]" if t.tz else f"timestamp[{t.unit}]"
    if pa.types.is_decimal(t):
        return f"decimal{t.bit_width}({t.precision}, {t.scale})"
    return s  # int8..uint64, string, large_string, binary, null, time32[..], duration[..] read the same


def features_of(schema: pa.Schema) -> Features:
    """Each column's feature: what a `datasets` writer stored in the schema metadata for types Arrow cannot say
    (ClassLabel, Image, ...), else what the Arrow type says, as `Features.from_arrow_schema` does."""
    stored: dict[str, Any] = {}
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw:
        try:
            stored = json.loads(raw)["info"]["features"] or {}
        except (ValueError, KeyError, TypeError):
            stored = {}
    out: Features = {}
    for f in schema:
        meta = stored.get(f.name)
        special = isinstance(meta, dict) and meta.get("_type") not in (None, *_VALUE_TYPES)
        out[f.name] = meta if special and isinstance(meta, dict) else arrow_feature(f.type)
    return out


def _is_struct(f: Any) -> bool:
    return isinstance(f, dict) and "_type" not in f


def is_null(f: Feature) -> bool:
    """A column with no values in a source (`Value("null")`, or a list of them): it adopts the others' type."""
    if f.get("_type") == "Value":
        return f.get("dtype") == "null"
    if f.get("_type") in ("List", "LargeList", "Sequence") and isinstance(f.get("feature"), dict):
        return is_null(f["feature"])
    return False


def describe(f: Any) -> str:
    """A feature as a short type name for messages: int64, list<string>, struct<a: int64>, ClassLabel(...)."""
    if _is_struct(f):
        return "struct<" + ", ".join(f"{k}: {describe(v)}" for k, v in f.items()) + ">"
    kind = f.get("_type")
    if kind == "Value":
        return str(f.get("dtype"))
    if kind in ("List", "LargeList", "Sequence"):
        size = f"[{f['length']}]" if f.get("length", -1) != -1 else ""
        return f"{'large_list' if kind == 'LargeList' else 'list'}<{describe(f.get('feature'))}>{size}"
    rest = ", ".join(f"{k}={v!r}" for k, v in f.items() if k != "_type")
    return f"{kind}({rest})"


def align(named: Sequence[tuple[str, Features]]) -> Features:
    """The merged features of sources (name, features) in order, or an error naming every column whose types
    differ, with the types and the sources."""
    problems: list[str] = []
    merged = _align(named, "", problems)
    if problems:
        raise InvalidInput(
            "the inputs' features cannot be aligned (as Hugging Face datasets requires for a whole-row merge): "
            + "; ".join(problems)
            + ". Give those columns one type in every input (a column with only nulls takes any type)"
        )
    return merged


def _align(named: Sequence[tuple[str, Features]], prefix: str, problems: list[str]) -> Features:
    merged: Features = {}
    owner: dict[str, str] = {}
    for where, feats in named:
        for k, v in feats.items():
            if k not in merged or is_null(merged[k]):
                merged[k], owner[k] = v, where
            elif _is_struct(merged[k]) and _is_struct(v):
                merged[k] = _align([(owner[k], merged[k]), (where, v)], f"{prefix}{k}.", problems)
            elif not is_null(v) and merged[k] != v:
                problems.append(
                    f"column {prefix}{k!r} is {describe(merged[k])} in {owner[k]} but {describe(v)} in {where}"
                )
    return merged


def merged_schema(schemas: Sequence[pa.Schema], features: Features) -> pa.Schema:
    """The Arrow schema of the merged rows (columns in order of first appearance, nulls promoted), carrying the
    features as `datasets` stores them."""
    plain = [s.remove_metadata() for s in schemas]
    schema = pa.unify_schemas(plain, promote_options="default") if plain else pa.schema([])
    return schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A source's rows in the merged schema: missing columns and struct fields as nulls, null columns typed."""
    if table.schema.remove_metadata() == schema.remove_metadata():
        return table.replace_schema_metadata(schema.metadata)
    filled = pa.concat_tables([schema.empty_table(), table.replace_schema_metadata(None)], promote_options="default")
    return filled.select(schema.names).cast(schema)


def to_yaml_list(features: Features) -> list[dict[str, Any]]:
    """The features as a dataset card's `dataset_info.features` list (`Features._to_yaml_list`)."""

    def simplify(feature: dict[str, Any]) -> dict[str, Any]:
        for list_type in ("large_list", "list", "sequence"):
            inner = feature.get(list_type)
            if isinstance(inner, dict) and list(inner) == ["dtype"]:
                feature[list_type] = inner["dtype"]
            if isinstance(inner, dict) and list(inner) == ["struct"]:
                feature[list_type] = inner["struct"]
        label = feature.get("class_label")
        if isinstance(label, dict) and isinstance(label.get("names"), list):
            label["names"] = {str(i): name for i, name in enumerate(label["names"])}
        return feature

    def inner(obj: dict[str, Any]) -> dict[str, Any]:
        kind = obj.pop("_type", None)
        if kind == "LargeList":
            return simplify({"large_list": inner(obj.pop("feature")), **obj})
        if kind in ("List", "Sequence"):
            return simplify({"list": inner(obj.pop("feature")), **obj})
        if kind == "Value":
            return obj
        if kind and not obj:
            return {"dtype": _snake(kind)}
        if kind:
            return {"dtype": simplify({_snake(kind): obj})}
        return {"struct": [{"name": name, **inner(f)} for name, f in obj.items()]}

    return inner(copy.deepcopy(features))["struct"]


def _snake(name: str) -> str:
    """`datasets`' camelcase_to_snakecase: ClassLabel -> class_label."""
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z\d])([A-Z])", r"\1_\2", name).lower()
