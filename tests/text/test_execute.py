"""What a run writes: HF order across chunk and block edges, SQLite sessions, exports, dedup."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, concatenate_datasets, interleave_datasets

from raymerge import api
from raymerge.errors import InvalidInput
from raymerge.text.samples import pairs, write_finefoundry_db, write_hub_snapshot, write_jsonl, write_save_to_disk
from tests.helpers import tree_digest

LENGTHS = {"jsonl": 23, "hub": 17, "saved": 5, "db": 11}


@pytest.fixture(scope="module")
def four_sources(tmp_path_factory):
    """The benchmark's four source kinds, tiny, each with several chunks."""
    root = tmp_path_factory.mktemp("four")
    tables = {k: pairs(k, n) for k, n in LENGTHS.items()}
    write_jsonl(root / "a.jsonl", tables["jsonl"])
    write_hub_snapshot(root / "hub", {"train": tables["hub"]}, shards=3)
    write_save_to_disk(root / "saved", tables["saved"], shards=2)
    write_finefoundry_db(root / "ff.db", {"other": pairs("other", 4), "mine": tables["db"]})
    inputs = [
        {"path": str(root / "a.jsonl")},
        {"path": str(root / "hub")},
        {"path": str(root / "saved")},
        {"path": str(root / "ff.db"), "session": "mine"},
    ]
    return root, tables, inputs


def _read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


CASES = [
    ("concat", None),
    ("interleave", {}),
    ("interleave", {"stopping_strategy": "all_exhausted"}),
    ("interleave", {"stopping_strategy": "all_exhausted_without_replacement"}),
    ("interleave", {"probabilities": [0.4, 0.3, 0.1, 0.2], "seed": 5}),
    ("interleave", {"probabilities": [0.4, 0.3, 0.1, 0.2], "seed": 5, "stopping_strategy": "all_exhausted"}),
    (
        "interleave",
        {"probabilities": [0.1, 0.2, 0.3, 0.4], "seed": 9, "stopping_strategy": "all_exhausted_without_replacement"},
    ),
]


@pytest.mark.parametrize("operation,interleave", CASES)
def test_output_order_matches_hf_datasets(ray_address, four_sources, small_chunks, tmp_path, operation, interleave):
    root, tables, inputs = four_sources
    before = tree_digest(root)
    cfg = {"kind": "text", "operation": operation, "inputs": inputs, "output": {"path": str(tmp_path / "o.jsonl")}}
    if interleave is not None:
        cfg["interleave"] = interleave
    report = api.run(cfg)
    got = _read_jsonl(tmp_path / "o.jsonl")
    hf_sets = [Dataset(tables[k]) for k in LENGTHS]
    expected = concatenate_datasets(hf_sets) if operation == "concat" else interleave_datasets(hf_sets, **interleave)
    assert got == expected.to_list()
    assert report.rows_out == len(got)
    assert [i.rows_in for i in report.inputs] == list(LENGTHS.values())
    assert tree_digest(root) == before


def test_dedup_keeps_first_appearances_in_hf_order(ray_address, four_sources, small_chunks, tmp_path):
    """all_exhausted repeats the shorter inputs: dedup keeps each pair where it first appears."""
    _, tables, inputs = four_sources
    interleave = {"probabilities": [0.4, 0.3, 0.1, 0.2], "seed": 5, "stopping_strategy": "all_exhausted"}
    cfg = {
        "kind": "text",
        "operation": "interleave",
        "interleave": interleave,
        "dedup": "exact",
        "inputs": inputs,
        "output": {"path": str(tmp_path / "o.jsonl")},
    }
    report = api.run(cfg)
    hf = interleave_datasets([Dataset(tables[k]) for k in LENGTHS], **interleave)
    expected = list(dict.fromkeys(zip(hf["input"], hf["output"], strict=True)))
    got = [(r["input"], r["output"]) for r in _read_jsonl(tmp_path / "o.jsonl")]
    assert got == expected
    assert report.rows_out == len(expected) == sum(LENGTHS.values()) < len(hf)


def test_sqlite_output_adds_a_session_and_leaves_others_untouched(ray_address, samples, tmp_path):
    db = tmp_path / "ff.db"
    shutil.copy(samples["sqlite"], db)
    query = "SELECT session_id, input_text, output_text FROM scraped_pairs ORDER BY id"
    old_pairs = sqlite3.connect(db).execute(query).fetchall()
    cfg = {
        "kind": "text",
        "operation": "interleave",
        "inputs": [{"path": str(db), "session": "reddit-python"}, {"path": str(samples["csv"])}],
        "output": {"path": str(db), "session_name": "merged"},
    }
    report = api.run(cfg)
    con = sqlite3.connect(db)
    sessions = con.execute(
        "SELECT id, name, source, source_details, pair_count, metadata_json FROM scrape_sessions ORDER BY id"
    ).fetchall()
    assert [s[:2] for s in sessions] == [(1, "reddit-python"), (2, "stack-sql"), (3, "merged")]
    new = sessions[2]
    assert new[2:5] == ("Merged", "merged", 8)
    assert json.loads(new[5]) == {"operation": "interleave", "source_count": 2}
    merged = con.execute("SELECT input_text FROM scraped_pairs WHERE session_id = 3 ORDER BY id").fetchall()
    assert [m[0] for m in merged][:4] == ["reddit question 0", "csv question 0", "reddit question 1", "csv question 1"]
    assert len(merged) == report.rows_out == 8
    assert con.execute(query).fetchall()[: len(old_pairs)] == old_pairs
    con.close()

    # The same session name again is refused, and the database is left byte-identical.
    before = tree_digest(tmp_path)
    with pytest.raises(InvalidInput, match=r"already has a session named 'merged' \(id 3\); set output.overwrite"):
        api.run(cfg)
    assert tree_digest(tmp_path) == before

    # With overwrite only that session is replaced.
    api.run({**cfg, "operation": "concat", "output": {**cfg["output"], "overwrite": True}})
    con = sqlite3.connect(db)
    names = con.execute("SELECT id, name, pair_count FROM scrape_sessions ORDER BY id").fetchall()
    assert names[:2] == [(1, "reddit-python", 6), (2, "stack-sql", 3)] and names[2][1:] == ("merged", 10)
    assert con.execute(query).fetchall()[: len(old_pairs)] == old_pairs
    assert con.execute("SELECT COUNT(*) FROM scraped_pairs WHERE session_id = 3").fetchone() == (0,)
    con.close()


def test_new_database_json_export_parquet_and_dedup(ray_address, samples, tmp_path):
    dup = tmp_path / "dup.jsonl"
    write_jsonl(dup, pa.Table.from_pylist([{"input": "csv question 1", "output": "csv answer 1"}] * 3))
    cfg = {
        "kind": "text",
        "operation": "concat",
        "dedup": "exact",
        "inputs": [{"path": str(samples["csv"])}, {"path": str(dup)}],
        "output": {"path": str(tmp_path / "new.db"), "session_name": "combined"},
        "exports": [{"path": str(tmp_path / "export.json")}, {"path": str(tmp_path / "out.parquet")}],
    }
    report = api.run(cfg)
    expected = [{"input": f"csv question {i}", "output": f"csv answer {i}"} for i in range(4)]
    assert json.loads((tmp_path / "export.json").read_text()) == expected
    assert pq.read_table(tmp_path / "out.parquet").to_pylist() == expected
    rows = sqlite3.connect(tmp_path / "new.db").execute(
        "SELECT p.input_text, s.pair_count FROM scraped_pairs p JOIN scrape_sessions s ON s.id = p.session_id ORDER BY p.id"
    )
    assert [r[0] for r in rows] == [e["input"] for e in expected]
    assert report.inputs[1].dropped == {"exact duplicate": 3} and report.rows_out == 4
    written = [p.name for p in tmp_path.iterdir() if not p.name.endswith(".raymerge.json")]  # the report
    assert sorted(written) == ["dup.jsonl", "export.json", "new.db", "out.parquet"]


def test_conversations_and_alpaca_to_json(ray_address, samples, tmp_path):
    cfg = {
        "kind": "text",
        "operation": "concat",
        "inputs": [{"path": str(samples["messages"])}, {"path": str(samples["json"])}, {"path": str(samples["jsonl"])}],
        "output": {"path": str(tmp_path / "m.json")},
    }
    report = api.run(cfg)
    rows = json.loads((tmp_path / "m.json").read_text())
    assert rows[:2] == [
        {"input": "chat question 0", "output": "chat answer 0"},
        {"input": "chat follow-up 0", "output": "chat follow-up answer 0"},
    ]
    assert rows[7] == {"input": "alpaca instruction 1\nalpaca context 1", "output": "alpaca output 1"}
    assert {"input": "padded question", "output": "padded answer"} in rows
    assert report.inputs[2].dropped == {"empty input or output": 1}
    assert len(rows) == report.rows_out == 6 + 5 + 8
