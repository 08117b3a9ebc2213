"""`read_text`, `read_finefoundry` and `FineFoundryDatasink`: the pairs a text merge would write, read with Ray
Data; Ray's own writers' files read back by ours, and our sink's sessions read back by Ray's `read_sql`."""

from __future__ import annotations

import json
import sqlite3

import pyarrow.parquet as pq
import pytest
import ray.data

import raymerge.data as rd
from raymerge import api, storage
from raymerge.errors import InvalidInput
from raymerge.text import sources
from raymerge.text.raydata import TextDatasource
from raymerge.text.samples import make_samples
from raymerge.text.scan import ScanSpec
from tests.data.conftest import leftovers


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return make_samples(tmp_path_factory.mktemp("text-samples"))


def merged(path, tmp_path, **inp) -> list[dict]:
    """What a one-input concat writes: the reference for what read_text should hold."""
    out = tmp_path / "merged.jsonl"
    api.run(
        {
            "kind": "text",
            "operation": "concat",
            "inputs": [{"path": str(path), **inp}],
            "output": {"path": str(out), "overwrite": True},
            "ray": {"executor": "in-process"},
        }
    )
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize(
    "kind",
    ["jsonl", "json", "parquet", "csv", "messages", "sharegpt", "hub", "save_to_disk", "dataset_dict", "hub_cache"],
)
def test_read_text_holds_the_pairs_a_merge_writes(ordered, samples, tmp_path, kind):
    assert rd.read_text(str(samples[kind])).take_all() == merged(samples[kind], tmp_path)


def test_every_chunk_is_a_read_task(ordered, samples, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "CHUNK_BYTES", 200)
    path = samples["jsonl"]
    src = sources.open_source(*storage.resolve(str(path)))
    tasks = TextDatasource([src], ScanSpec()).get_read_tasks(1)
    assert len(tasks) == len(src.chunks) > 2
    assert rd.read_text(str(path)).take_all() == merged(path, tmp_path)


def test_several_paths_are_read_in_order_and_whole_rows_kept(ordered, samples, tmp_path):
    ds = rd.read_text([str(samples["parquet"]), str(samples["csv"])])
    assert ds.take_all() == merged(samples["parquet"], tmp_path) + merged(samples["csv"], tmp_path)
    rows = rd.read_text(str(samples["parquet"]), columns="keep").take_all()
    assert rows == pq.read_table(samples["parquet"]).to_pylist()


def test_a_session_by_name_or_id(ordered, samples, tmp_path):
    db = samples["sqlite"]
    by_name = rd.read_finefoundry(str(db), "stack-sql").take_all()
    assert by_name == merged(db, tmp_path, session="stack-sql")
    assert rd.read_finefoundry(str(db), 1).take_all() == merged(db, tmp_path, session=1)
    with pytest.raises(InvalidInput, match=r"no session named 'nope'.*reddit-python"):
        rd.read_finefoundry(str(db), "nope")


def test_bad_sources_are_refused_before_any_task(samples, tmp_path):
    with pytest.raises(InvalidInput, match="no such file"):
        rd.read_text(str(tmp_path / "missing.jsonl"))
    with pytest.raises(InvalidInput, match="input_column and output_column"):
        rd.read_text(str(samples["jsonl"]), input_column="input")
    with pytest.raises(InvalidInput, match="no split 'dev'"):
        rd.read_text(str(samples["hub"]), split="dev")


@pytest.mark.parametrize("writer", ["write_parquet", "write_json"])
def test_what_ray_writes_reads_back(ordered, tmp_path, writer):
    rows = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(40)]
    getattr(ray.data.from_items(rows).repartition(3), writer)(str(tmp_path / "ray"))
    got = rd.read_text(str(tmp_path / "ray")).take_all()
    expected = [{"input": r["prompt"], "output": r["completion"]} for r in rows]
    assert sorted(got, key=str) == sorted(expected, key=str)


def session_rows(db, name) -> list[tuple]:
    return (
        sqlite3.connect(db)
        .execute(
            "SELECT p.input_text, p.output_text FROM scraped_pairs p JOIN scrape_sessions s ON s.id = p.session_id "
            "WHERE s.name = ? ORDER BY p.id",
            (name,),
        )
        .fetchall()
    )


def test_finefoundry_sink_round_trip(ordered, samples, tmp_path):
    db = tmp_path / "finefoundry.db"
    db.write_bytes(samples["sqlite"].read_bytes())
    pairs = rd.read_text([str(samples["jsonl"]), str(samples["csv"])]).repartition(4)
    expected = pairs.take_all()
    pairs.write_datasink(rd.FineFoundryDatasink(str(db), "curated"))
    assert rd.read_finefoundry(str(db), "curated").take_all() == expected
    by_ray = ray.data.read_sql(
        "SELECT p.input_text, p.output_text FROM scraped_pairs p JOIN scrape_sessions s ON s.id = p.session_id "
        "WHERE s.name = 'curated' ORDER BY p.id",
        lambda: sqlite3.connect(db),
    ).take_all()
    assert [(r["input_text"], r["output_text"]) for r in by_ray] == [(r["input"], r["output"]) for r in expected]
    con = sqlite3.connect(db)
    source, count = con.execute("SELECT source, pair_count FROM scrape_sessions WHERE name = 'curated'").fetchone()
    assert (source, count) == ("Merged", len(expected))
    assert session_rows(db, "stack-sql") == session_rows(samples["sqlite"], "stack-sql")  # the others are kept
    assert leftovers(db) == []


def test_an_existing_session_is_replaced_only_when_asked(ordered, tmp_path):
    db = tmp_path / "new.db"
    ray.data.from_items([{"input": "a", "output": "b"}]).write_datasink(rd.FineFoundryDatasink(str(db), "s"))
    with pytest.raises(InvalidInput, match="already has a session named 's'"):
        rd.FineFoundryDatasink(str(db), "s")
    ray.data.from_items([{"input": "c", "output": "d"}]).write_datasink(
        rd.FineFoundryDatasink(str(db), "s", overwrite=True)
    )
    assert session_rows(db, "s") == [("c", "d")]


def test_a_failed_pipeline_leaves_the_database_as_it_was(ordered, samples, tmp_path):
    db = tmp_path / "finefoundry.db"
    db.write_bytes(samples["sqlite"].read_bytes())
    before = db.read_bytes()

    def fail_late(batch):
        if "csv question 3" in list(batch["input"]):
            raise ValueError("a bad batch")
        return batch

    pairs = rd.read_text([str(samples["jsonl"]), str(samples["csv"])]).map_batches(fail_late, batch_size=2)
    with pytest.raises(Exception, match="a bad batch"):
        pairs.write_datasink(rd.FineFoundryDatasink(str(db), "curated"))
    assert db.read_bytes() == before
    assert leftovers(db) == []
    with pytest.raises(InvalidInput, match="no output column"):
        ray.data.from_items([{"input": "a"}]).write_datasink(rd.FineFoundryDatasink(str(db), "x"))
    assert db.read_bytes() == before
