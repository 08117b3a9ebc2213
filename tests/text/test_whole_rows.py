"""`columns: keep`: whole rows merged as Hugging Face `datasets` merges them (concatenate_datasets and
interleave_datasets): the same order, every column, types aligned by its rules, mismatches refused by name."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import (
    ClassLabel,
    Dataset,
    Features,
    List,
    Value,
    concatenate_datasets,
    interleave_datasets,
    load_dataset,
    load_from_disk,
)

from raymerge import api
from raymerge.families import load_config
from raymerge.text.describe import preview_config
from tests.helpers import assert_rejected

LABELS = ClassLabel(names=["chat", "code", "math"])
CASES = [
    ("concat", None),
    ("interleave", {}),
    ("interleave", {"stopping_strategy": "all_exhausted"}),
    ("interleave", {"stopping_strategy": "all_exhausted_without_replacement"}),
    ("interleave", {"probabilities": [0.5, 0.2, 0.3], "seed": 3}),
    ("interleave", {"probabilities": [0.5, 0.2, 0.3], "seed": 3, "stopping_strategy": "all_exhausted"}),
]


def _row(prefix: str, i: int) -> dict:
    return {"id": i, "instruction": f"{prefix} do {i}", "output": f"{prefix} done {i}", "label": i % 3}


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    """Three sources of one dataset family as users have them: a JSONL file with extra columns, a parquet file
    written by `datasets` (class labels in its metadata, a list column the others lack) and a `save_to_disk`
    folder with a column that is null throughout; each with the HF dataset it loads as."""
    root = tmp_path_factory.mktemp("whole")
    cache = str(root / "hf-cache")
    feats = Features({"id": Value("int64"), "instruction": Value("string"), "output": Value("string"), "label": LABELS})
    # JSON keeps no class labels, so this source has none (datasets refuses int64 beside a ClassLabel)
    rows_a = [{**_row("a", i), "source": "web", "note": f"n{i}" if i % 2 else None} for i in range(9)]
    a = Dataset.from_list([{k: v for k, v in r.items() if k != "label"} for r in rows_a])
    a.to_json(root / "a.jsonl")
    b = Dataset.from_list(
        [{**_row("b", i), "tags": [f"t{i}"] * (i % 3)} for i in range(4)],
        features=Features({**feats, "tags": List(Value("string"))}),
    )
    b.to_parquet(root / "b.parquet")
    c = Dataset.from_list([{**_row("c", i), "note": None} for i in range(6)])
    c = c.cast_column("label", LABELS)
    c.save_to_disk(str(root / "c"), max_shard_size=300)
    hf = [
        load_dataset("json", data_files=str(root / "a.jsonl"), split="train", cache_dir=cache),
        load_dataset("parquet", data_files=str(root / "b.parquet"), split="train", cache_dir=cache),
        load_from_disk(str(root / "c")),
    ]
    paths = [root / "a.jsonl", root / "b.parquet", root / "c"]
    return paths, hf, cache


def _expected(hf, operation, interleave):
    return concatenate_datasets(hf) if operation == "concat" else interleave_datasets(hf, **interleave)


@pytest.mark.parametrize("operation,interleave", CASES)
def test_rows_and_features_equal_datasets(ray_address, three, small_chunks, tmp_path, operation, interleave):
    paths, hf, cache = three
    expected = _expected(hf, operation, interleave)
    cfg = {
        "kind": "text",
        "operation": operation,
        "columns": "keep",
        "inputs": [{"path": str(p)} for p in paths],
        "output": {"path": str(tmp_path / "hub"), "format": "hf"},
        "exports": [
            {"path": str(tmp_path / "saved"), "format": "save_to_disk", "max_shard_size": 500},
            {"path": str(tmp_path / "rows.parquet")},
            {"path": str(tmp_path / "rows.jsonl")},
        ],
    }
    if interleave is not None:
        cfg["interleave"] = interleave
    report = api.run(cfg)
    assert report.rows_out == len(expected)
    hub = load_dataset(str(tmp_path / "hub"), split="train", cache_dir=cache)
    saved = load_from_disk(str(tmp_path / "saved"))
    for got in (hub, saved):
        assert got.features == expected.features
        assert got.to_list() == expected.to_list()
    assert len(list((tmp_path / "saved").glob("data-*.arrow"))) > 1
    table = pq.read_table(tmp_path / "rows.parquet")
    assert Features.from_arrow_schema(table.schema) == expected.features
    assert table.to_pandas().to_dict("records")[0].keys() == expected[0].keys()
    lines = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert lines == expected.to_list()


def test_mismatched_features_are_named_and_nothing_is_written(ray_address, three, tmp_path):
    paths, hf, _ = three
    other = tmp_path / "in" / "ids-as-text.jsonl"
    other.parent.mkdir()
    other.write_text('{"id": "x1", "instruction": "q", "output": "a", "label": 1.5}\n')
    with pytest.raises(ValueError, match="can't be aligned"):  # datasets refuses the same merge
        concatenate_datasets(
            [hf[1], Dataset.from_list([{"id": "x1", "instruction": "q", "output": "a", "label": 1.5}])]
        )
    output = tmp_path / "out" / "hub"
    cfg = {
        "kind": "text",
        "operation": "concat",
        "columns": "keep",
        "inputs": [{"path": str(paths[1])}, {"path": str(other)}],
        "output": {"path": str(output), "format": "hf"},
    }
    message = (
        r"features cannot be aligned .*: column 'id' is int64 in b.parquet but string in ids-as-text.jsonl; "
        r"column 'label' is ClassLabel\(names=\['chat', 'code', 'math'\]\) in b.parquet but float64 in ids-as-text.jsonl"
    )
    assert_rejected(cfg, message, [paths[1].parent, other.parent], output)


def test_an_input_without_rows_takes_no_part(ray_address, three, tmp_path):
    """As in concatenate_datasets, a source with no rows adds no columns and its types are not checked."""
    paths, hf, cache = three
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "extra": pa.array([], pa.int8())}), empty)
    cfg = {
        "kind": "text",
        "operation": "concat",
        "columns": "keep",
        "inputs": [{"path": str(paths[1])}, {"path": str(empty)}],
        "output": {"path": str(tmp_path / "o.parquet")},
    }
    api.run(cfg)
    expected = concatenate_datasets([hf[1], Dataset.from_dict({"id": [], "extra": []})])
    got = load_dataset("parquet", data_files=str(tmp_path / "o.parquet"), split="train", cache_dir=cache)
    assert got.features == expected.features and got.to_list() == expected.to_list()


def test_preview_of_whole_rows_fills_missing_columns(three, tmp_path):
    paths, hf, _ = three
    cfg = load_config(
        {
            "kind": "text",
            "operation": "interleave",
            "columns": "keep",
            "inputs": [{"path": str(p)} for p in paths],
            "output": {"path": str(tmp_path / "o.jsonl")},
        }
    )
    head = preview_config(cfg, 3)
    expected = interleave_datasets(hf).to_list()[:3]
    assert [r["instruction"] for r in head] == [r["instruction"] for r in expected]
    assert head[0]["tags"] is None and head[1]["tags"] == []


@pytest.mark.parametrize(
    "change,message",
    [
        ({"output": {"path": "x.db", "session_name": "s"}}, r"output: a FineFoundry session holds input/output pairs"),
        ({"dedup": "exact"}, r"dedup compares input/output pairs; it applies to columns: pairs"),
        ({"inputs": [{"path": "a.jsonl", "input_column": "q", "output_column": "a"}]}, r"inputs\[0\]: input_column"),
    ],
)
def test_pair_options_are_refused_with_whole_rows(change, message):
    cfg = {
        "kind": "text",
        "operation": "concat",
        "columns": "keep",
        "inputs": [{"path": "a.jsonl"}],
        "output": {"path": "o.jsonl"},
        **change,
    }
    with pytest.raises(Exception, match=message):
        load_config(cfg)
