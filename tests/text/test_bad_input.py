"""Rejected input: one clear message, nothing written, inputs byte-identical."""

from __future__ import annotations

import shutil

import pytest

from raymerge import api
from raymerge.errors import InvalidInput
from tests.helpers import tree_digest


@pytest.fixture
def work(samples, tmp_path):
    """Private copies of the samples, so digests cover exactly what one run could touch."""
    src = tmp_path / "in"
    shutil.copytree(next(iter(samples.values())).parent, src, symlinks=True)
    return src, tmp_path / "out"


def _config(inp, out, **extra):
    return {"kind": "text", "operation": "concat", "inputs": inp, "output": {"path": str(out / "m.jsonl")}, **extra}


def _rejected(src, out, cfg, message: str) -> None:
    before = tree_digest(src)
    with pytest.raises(InvalidInput, match=message):
        api.run(cfg)
    assert not out.exists()
    assert tree_digest(src) == before


def test_missing_file(ray_address, work):
    src, out = work
    _rejected(src, out, _config([{"path": str(src / "absent.jsonl")}], out), r"absent.jsonl: no such file or folder")


def test_unreadable_json_names_the_line(ray_address, work):
    src, out = work
    bad = src / "bad.jsonl"
    bad.write_text('{"input": "a", "output": "b"}\n{"input": "c", "output": }\n')
    _rejected(src, out, _config([{"path": str(bad)}], out), r"bad.jsonl: line 2: not valid JSON")


def test_unreadable_parquet(ray_address, work):
    src, out = work
    bad = src / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    _rejected(src, out, _config([{"path": str(bad)}], out), r"bad.parquet: not a readable parquet file")


def test_csv_whose_header_is_not_utf8(ray_address, work):
    src, out = work
    bad = src / "latin1.csv"
    bad.write_bytes("question,r\xe9ponse\nq,a\n".encode("latin-1"))
    _rejected(
        src, out, _config([{"path": str(bad)}], out), r"latin1.csv: not a readable csv file: its header is not UTF-8"
    )


def test_database_without_the_session_lists_sessions(ray_address, work):
    src, out = work
    cfg = _config([{"path": str(src / "finefoundry.db"), "session": "missing"}], out)
    _rejected(
        src, out, cfg, r"no session 'missing'; sessions: 1: 'reddit-python' \(6 pairs\), 2: 'stack-sql' \(3 pairs\)"
    )


def test_unmappable_columns_list_the_columns(ray_address, work):
    src, out = work
    cfg = _config([{"path": str(src / "pairs.jsonl")}, {"path": str(src / "preference.jsonl")}], out)
    _rejected(src, out, cfg, r"preference.jsonl: this is preference data.*columns found: prompt \(string\)")
    cfg = _config([{"path": str(src / "qa.csv"), "input_column": "question", "output_column": "reply"}], out)
    _rejected(src, out, cfg, r"column 'reply' not found; columns found: question \(string\), answer \(string\)")


@pytest.mark.parametrize(
    "probabilities,message",
    [
        ([0.5, 0.5, 0.0], r"interleave.probabilities has 3 values but there are 2 inputs"),
        ([1.5, -0.5], r"probabilities must be non-negative numbers"),
        ([0.3, 0.3], r"probabilities must sum to 1 \(got \[0.3, 0.3\], sum 0.6\)"),
    ],
)
def test_bad_probabilities(work, probabilities, message):
    src, out = work
    cfg = _config([{"path": str(src / "pairs.jsonl")}, {"path": str(src / "qa.csv")}], out, operation="interleave")
    cfg["interleave"] = {"probabilities": probabilities, "seed": 1}
    _rejected(src, out, cfg, message)


def test_no_inputs(work):
    src, out = work
    _rejected(src, out, _config([], out), r"inputs: List should have at least 1 item")


def test_output_already_exists(ray_address, work):
    src, out = work
    out.mkdir()
    (out / "m.jsonl").write_text("keep me\n")
    with pytest.raises(InvalidInput, match=r"m.jsonl already exists; set output.overwrite: true"):
        api.run(_config([{"path": str(src / "qa.csv")}], out))
    assert (out / "m.jsonl").read_text() == "keep me\n"
    export = out / "x.json"
    export.write_text("[]")
    cfg = _config([{"path": str(src / "qa.csv")}], out, exports=[{"path": str(export)}])
    cfg["output"]["overwrite"] = True
    with pytest.raises(InvalidInput, match=r"x.json already exists"):
        api.run(cfg)
    assert (out / "m.jsonl").read_text() == "keep me\n" and export.read_text() == "[]"


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
    src, out = work
    _rejected(src, out, {**_config([{"path": str(src / "qa.csv")}], out), **change}, message)


def test_unknown_input_key_names_its_path(work):
    src, out = work
    cfg = _config([{"path": str(src / "qa.csv")}, {"path": str(src / "pairs.jsonl"), "sesion": 1}], out)
    _rejected(src, out, cfg, r"inputs\[1\]\.sesion: unknown key")


def test_sqlite_output_needs_a_session_name(work):
    src, out = work
    cfg = _config([{"path": str(src / "qa.csv")}], out)
    cfg["output"] = {"path": str(out / "m.db")}
    _rejected(src, out, cfg, r"session_name is required when writing a SQLite database")
