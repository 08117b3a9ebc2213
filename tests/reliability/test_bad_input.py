"""Bad inputs the family suites do not already cover: one clear message, nothing written, inputs byte-identical."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymerge import api
from raymerge.errors import InvalidInput
from raymerge.lerobot import samples as lerobot_samples
from raymerge.text import samples as text_samples
from raymerge.webdataset import samples as wds_samples
from tests.helpers import run_cli, tree_digest


def _rejected(root: Path, cfg: dict, message: str) -> None:
    before = tree_digest(root)
    with pytest.raises(InvalidInput, match=message):
        api.run(cfg)
    assert tree_digest(root) == before
    assert not list(root.glob("out*")) and not list(root.glob(".out*staging*"))


def _text(path: Path, root: Path) -> dict:
    return {
        "kind": "text",
        "operation": "concat",
        "inputs": [{"path": str(path)}],
        "output": {"path": str(root / "out.jsonl")},
    }


def _json_syntax(p: Path) -> None:
    p.write_text('[\n {"input": "a", "output": "b"},\n {"input": "c" "output": "d"}\n]\n')


def _broken_footer(p: Path) -> None:
    pq.write_table(text_samples.pairs("p", 50), p)
    p.write_bytes(p.read_bytes()[:-12])


TEXT_CASES: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "json_syntax_error": (
        "arr.json",
        _json_syntax,
        r"arr.json: line 3 column 16: not valid JSON: Expecting ',' delimiter",
    ),
    "json_not_utf8": (
        "latin.json",
        lambda p: p.write_bytes(b'[{"input": "caf\xe9"}]'),
        r"latin.json: not valid JSON: not UTF-8 text at byte 15",
    ),
    "jsonl_non_object_line": (
        "rows.jsonl",
        lambda p: p.write_text('{"input": "a", "output": "b"}\n[1, 2]\n'),
        r"rows.jsonl: expected a JSON array of objects \(or one object per line\)",
    ),
    "parquet_broken_footer": (
        "cut.parquet",
        _broken_footer,
        r"cut.parquet: not a readable parquet file: Parquet magic bytes not found in footer",
    ),
    "parquet_wrong_schema": (
        "ints.parquet",
        lambda p: pq.write_table(pa.table({"a": [1, 2], "b": [3, 4]}), p),
        r"ints.parquet: cannot map columns to input/output; columns found: a \(int64\), b \(int64\)",
    ),
    "sqlite_not_a_database": (
        "junk.db",
        lambda p: p.write_bytes(b"this is not sqlite" * 50),
        r"junk.db: not a FineFoundry database \(scrape_sessions/scraped_pairs\): file is not a database",
    ),
    "unknown_file_type": ("pairs.xml", lambda p: p.write_text("<pairs/>"), r"pairs.xml: unknown file type .xml"),
}


@pytest.mark.parametrize("case", sorted(TEXT_CASES))
def test_text_input_rejected(ray_address, tmp_path, case):
    name, make, message = TEXT_CASES[case]
    make(tmp_path / name)
    _rejected(tmp_path, _text(tmp_path / name, tmp_path), message)


def test_locked_database(ray_address, tmp_path):
    db = text_samples.write_finefoundry_db(tmp_path / "locked.db", {"s": text_samples.pairs("s", 3)})
    holder = sqlite3.connect(db, isolation_level=None, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")  # another program is writing
    try:
        _rejected(tmp_path, _text(db, tmp_path), r"locked.db: database is locked by another program")
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def _wds(inp: Path, root: Path, **output) -> dict:
    return {
        "kind": "webdataset",
        "operation": "concat",
        "inputs": [{"path": str(inp)}],
        "output": {"path": str(root / "out"), **output},
    }


def test_gzip_that_is_not_gzip(ray_address, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "s.tar.gz").write_bytes(b"not gzip at all" * 40)
    _rejected(
        tmp_path, _wds(tmp_path / "in", tmp_path), r"s.tar.gz: not a readable tar file \(ReadError: not a gzip file\)"
    )


def test_string_for_maxcount(ray_address, tmp_path):
    wds_samples.write_shards(tmp_path / "in", wds_samples.image_samples(wds_samples.keys(4)), 1)
    _rejected(
        tmp_path,
        _wds(tmp_path / "in", tmp_path, maxcount="many"),
        r"output.maxcount: Input should be a valid integer, unable to parse string as an integer \(got 'many'\)",
    )


@pytest.fixture(scope="module")
def lerobot_base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lerobot-base") / "base"
    lerobot_samples.make(None, str(root), version="v3.0", lengths=(4, 5), cameras=1)
    return root


def _drop_fps(root: Path) -> None:
    info = json.loads((root / "meta/info.json").read_text())
    del info["fps"]
    (root / "meta/info.json").write_text(json.dumps(info))


def _junk_mp4(root: Path) -> None:
    next(root.rglob("*.mp4")).write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"junk" * 100)


LEROBOT_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "info_missing_key": (_drop_fps, r"input bad: .*meta/info.json: required key 'fps' is missing"),
    "info_not_json": (
        lambda r: (r / "meta/info.json").write_text("{not json"),
        r"input bad: .*meta/info.json: not valid JSON",
    ),
    "tasks_missing": (
        lambda r: (r / "meta/tasks.parquet").unlink(),
        r"input bad: .*meta/tasks.parquet: file is missing",
    ),
    "mp4_not_a_video": (_junk_mp4, r"file-000.mp4: not a readable video"),
}


@pytest.mark.parametrize("case", sorted(LEROBOT_CASES))
def test_lerobot_input_rejected(ray_address, lerobot_base, tmp_path, case):
    make, message = LEROBOT_CASES[case]
    bad = Path(shutil.copytree(lerobot_base, tmp_path / "bad"))
    make(bad)
    cfg = {"kind": "lerobot", "inputs": [{"path": str(bad)}], "output": {"path": str(tmp_path / "out")}}
    _rejected(tmp_path, cfg, message)


def test_cli_yaml_list_and_bad_utf8_exit_2(tmp_path):
    (tmp_path / "list.yaml").write_text("- kind: text\n- operation: concat\n")
    (tmp_path / "bytes.yaml").write_bytes(b"kind: text\noperation: \xff\xfe\n")
    for name, message in [("list.yaml", "the top level must be a mapping"), ("bytes.yaml", "not UTF-8 text (byte 22)")]:
        result = run_cli("plan", str(tmp_path / name))
        assert result.returncode == 2
        assert result.stderr.strip() == f"raymerge: error: config {tmp_path / name}: {message}" + (
            " with kind, operation, inputs, output" if name == "list.yaml" else ""
        )
