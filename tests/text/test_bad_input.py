"""Rejected input: one clear message, nothing written, inputs byte-identical."""

from __future__ import annotations

import shutil

import pytest

from raymerge import api
from raymerge.errors import InvalidInput
from tests.helpers import assert_rejected


@pytest.fixture
def work(samples, tmp_path):
    """Private copies of the samples, so digests cover exactly what one run could touch; and the output."""
    src = tmp_path / "in"
    shutil.copytree(next(iter(samples.values())).parent, src, symlinks=True)
    return src, tmp_path / "out" / "m.jsonl"


def _config(inp, output, **extra):
    return {"kind": "text", "operation": "concat", "inputs": inp, "output": {"path": str(output)}, **extra}


def test_missing_file(ray_address, work):
    src, output = work
    cfg = _config([{"path": str(src / "absent.jsonl")}], output)
    assert_rejected(cfg, r"absent.jsonl: no such file or folder", [src], output)


def test_unreadable_json_names_the_line(ray_address, work):
    src, output = work
    bad = src / "bad.jsonl"
    bad.write_text('{"input": "a", "output": "b"}\n{"input": "c", "output": }\n')
    assert_rejected(_config([{"path": str(bad)}], output), r"bad.jsonl: line 2: not valid JSON", [src], output)


def test_unreadable_parquet(ray_address, work):
    src, output = work
    bad = src / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    assert_rejected(_config([{"path": str(bad)}], output), r"bad.parquet: not a readable parquet file", [src], output)


def test_csv_whose_header_is_not_utf8(ray_address, work):
    src, output = work
    bad = src / "latin1.csv"
    bad.write_bytes("question,r\xe9ponse\nq,a\n".encode("latin-1"))
    message = r"latin1.csv: not a readable csv file: its header is not UTF-8"
    assert_rejected(_config([{"path": str(bad)}], output), message, [src], output)


def test_database_without_the_session_lists_sessions(ray_address, work):
    src, output = work
    cfg = _config([{"path": str(src / "finefoundry.db"), "session": "missing"}], output)
    message = (
        r"no session named 'missing'; sessions: 1: 'reddit-python' \(reddit, r/reddit-python, created [-0-9: ]+, "
        r"6 pairs\); 2: 'stack-sql' \(reddit, r/stack-sql, created [-0-9: ]+, 3 pairs\)"
    )
    assert_rejected(cfg, message, [src], output)


def test_unmappable_columns_list_the_columns(ray_address, work):
    src, output = work
    cfg = _config([{"path": str(src / "pairs.jsonl")}, {"path": str(src / "preference.jsonl")}], output)
    message = r"preference.jsonl: this is preference data.*columns found: prompt \(string\)"
    assert_rejected(cfg, message, [src], output)
    cfg = _config([{"path": str(src / "qa.csv"), "input_column": "question", "output_column": "reply"}], output)
    message = r"column 'reply' not found; columns found: question \(string\), answer \(string\)"
    assert_rejected(cfg, message, [src], output)


@pytest.mark.parametrize(
    "probabilities,message",
    [
        ([0.5, 0.5, 0.0], r"interleave.probabilities has 3 values but there are 2 inputs"),
        ([1.5, -0.5], r"probabilities must be non-negative numbers"),
        ([0.3, 0.3], r"probabilities must sum to 1 \(got \[0.3, 0.3\], sum 0.6\)"),
    ],
)
def test_bad_probabilities(work, probabilities, message):
    src, output = work
    cfg = _config([{"path": str(src / "pairs.jsonl")}, {"path": str(src / "qa.csv")}], output, operation="interleave")
    cfg["interleave"] = {"probabilities": probabilities, "seed": 1}
    assert_rejected(cfg, message, [src], output)


def test_no_inputs(work):
    src, output = work
    assert_rejected(_config([], output), r"inputs: List should have at least 1 item", [src], output)


def test_output_already_exists(ray_address, work):
    src, output = work
    output.parent.mkdir()
    output.write_text("keep me\n")
    with pytest.raises(InvalidInput, match=r"m.jsonl already exists; set output.overwrite: true"):
        api.run(_config([{"path": str(src / "qa.csv")}], output))
    assert output.read_text() == "keep me\n"
    export = output.parent / "x.json"
    export.write_text("[]")
    cfg = _config([{"path": str(src / "qa.csv")}], output, exports=[{"path": str(export), "overwrite": False}])
    cfg["output"]["overwrite"] = True
    with pytest.raises(InvalidInput, match=r"export .*x.json already exists; set exports\[0\].overwrite: true"):
        api.run(cfg)
    assert output.read_text() == "keep me\n" and export.read_text() == "[]"


@pytest.mark.parametrize(
    "change,message",
    [
        ({"kind": "texts"}, r"kind: 'texts' is not known; expected one of: lerobot, text, webdataset"),
        ({"operation": "merge"}, r"operation: Input should be 'concat' or 'interleave'"),
        ({"colour": "blue"}, r"colour: unknown key"),
        ({"interleave": {"seed": 1}}, r"interleave options only apply to operation: interleave"),
    ],
)
def test_unknown_kind_operation_and_keys(work, change, message):
    src, output = work
    assert_rejected({**_config([{"path": str(src / "qa.csv")}], output), **change}, message, [src], output)


def test_unknown_input_key_names_its_path(work):
    src, output = work
    cfg = _config([{"path": str(src / "qa.csv")}, {"path": str(src / "pairs.jsonl"), "sesion": 1}], output)
    assert_rejected(cfg, r"inputs\[1\]\.sesion: unknown key", [src], output)


def test_sqlite_output_needs_a_session_name(work):
    src, output = work
    database = output.with_name("m.db")
    cfg = _config([{"path": str(src / "qa.csv")}], database)
    assert_rejected(cfg, r"session_name is required when writing a SQLite database", [src], database)
