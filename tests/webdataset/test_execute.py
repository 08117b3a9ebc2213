"""Writing is the same whoever runs it: Ray tasks and an actor, or the same functions in this process."""

from __future__ import annotations

import sqlite3

import pytest

from raymerge import api
from raymerge.webdataset import execute, tasks
from raymerge.webdataset.execute import shards_per_writer, writer_cpus
from raymerge.webdataset.layout import OutputShard
from tests.helpers import tree_digest

RUN_SPECIFIC = ("index.uuid", "raymerge.json")


def written(root) -> dict[str, str]:
    """Every output file's digest except those that name the run."""
    return {name: digest for name, digest in tree_digest(root).items() if name.rsplit("/", 1)[-1] not in RUN_SPECIFIC}


@pytest.mark.parametrize(
    ("operation", "extra"),
    [
        ("join", {"output": {"maxcount": 7, "split_ratio": {"train": 3, "val": 1}}}),
        ("concat", {"on_duplicate_key": "renumber", "output": {"shuffle": {"seed": 2}, "maxsize": 3000}}),
    ],
)
def test_ray_and_in_process_write_identical_bytes(ray_address, wds, tmp_path, operation, extra):
    root = wds["root"]
    secondary = {"path": str(root / "captions")} | ({"nonmatch": "none"} if operation == "join" else {})
    digests, reports = {}, {}
    for mode in ("ray", "in-process"):
        cfg = {
            "kind": "webdataset",
            "operation": operation,
            "inputs": [{"path": str(root / "images")}, secondary],
            "output": {"path": str(tmp_path / mode), **extra["output"]},
            "ray": {"executor": mode},
            **{k: v for k, v in extra.items() if k != "output"},
        }
        report = api.run(cfg)
        assert report.details["executor"] == mode
        digests[mode] = written(tmp_path / mode)
        reports[mode] = (report.rows_out, [i.rows_out for i in report.inputs], report.files_written)
    assert digests["ray"] == digests["in-process"]
    assert reports["ray"] == reports["in-process"]
    assert ".nv-meta/index.sqlite" in digests["ray"]  # filled by an actor on Ray, in this process otherwise


def test_many_shards_get_three_writers_per_two_cores_few_one_per_core():
    assert writer_cpus(31, 2) == 1 and writer_cpus(32, 2) == 2 / 3
    assert writer_cpus(1000, 2) == 2 / 3 and writer_cpus(1000, 64) == 1


def test_many_shards_per_core_are_written_a_few_per_task():
    assert shards_per_writer(100, 2) == 1 and shards_per_writer(1000, 2) == 4 and shards_per_writer(300, 2) == 2
    assert shards_per_writer(10**6, 2) == execute.SHARDS_PER_WRITER


@pytest.mark.parametrize("mode", ["ray", "in-process"])
def test_shards_written_several_per_task_are_the_same_bytes(ray_address, wds, tmp_path, monkeypatch, mode):
    """Groups of three, the last one short, and a shard's rows across two ordered chunks."""
    root = wds["root"]
    cfg = {
        "kind": "webdataset",
        "operation": "join",
        "inputs": [{"path": str(root / "images")}, {"path": str(root / "captions"), "nonmatch": "none"}],
        "output": {"path": str(tmp_path / "one"), "maxcount": 7},
        "ray": {"executor": mode},
    }
    one = api.run(cfg)
    monkeypatch.setattr(execute, "WRITER_TASKS_PER_CPU", 1)
    monkeypatch.setattr(execute, "SHARDS_PER_WRITER", 3)
    assert len(one.files_written) > 3 * 3  # shards (and their .tar.idx): more than one full group
    grouped = api.run({**cfg, "output": {**cfg["output"], "path": str(tmp_path / "grouped")}})
    assert written(tmp_path / "one") == written(tmp_path / "grouped")
    assert grouped.files_written == one.files_written and grouped.details["tar_bytes"] == one.details["tar_bytes"]


@pytest.mark.parametrize(
    ("operation", "extra"),
    [
        ("join", {"output": {"maxcount": 7}}),
        ("concat", {"on_duplicate_key": "renumber", "output": {"shuffle": {"seed": 2}, "maxsize": 3000}}),
        ("concat", {"on_duplicate_key": "prefix", "output": {"maxcount": 5}}),
    ],
)
@pytest.mark.parametrize("mode", ["ray", "in-process"])
def test_index_of_keys_built_before_the_shards_finds_every_written_sample(
    ray_address, wds, tmp_path, operation, extra, mode
):
    """The key index is made from the ordered chunks before any shard is written: every key the writers
    wrote must lead, through it, to that very sample row."""
    root = wds["root"]
    secondary = {"path": str(root / "captions")} | ({"nonmatch": "none"} if operation == "join" else {})
    cfg = {
        "kind": "webdataset",
        "operation": operation,
        "inputs": [{"path": str(root / "images")}, secondary],
        "output": {"path": str(tmp_path / "out"), **extra["output"]},
        "ray": {"executor": mode},
        **{k: v for k, v in extra.items() if k != "output"},
    }
    report = api.run(cfg)
    db = sqlite3.connect(tmp_path / "out" / ".nv-meta" / "index.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    rows = db.execute("SELECT rowid, sample_key, tar_file_id, sample_index FROM samples NOT INDEXED").fetchall()
    assert len(rows) == report.rows_out and max(r[2] for r in rows) > 1
    by_key = "SELECT rowid, tar_file_id, sample_index FROM samples INDEXED BY sqlite_autoindex_samples_1 WHERE sample_key = ?"
    for rowid, key, tar, index in rows:
        assert db.execute(by_key, (key,)).fetchall() == [(rowid, tar, index)]
    in_order = [
        r[0]
        for r in db.execute("SELECT sample_key FROM samples INDEXED BY sqlite_autoindex_samples_1 ORDER BY sample_key")
    ]
    assert in_order == sorted(r[1] for r in rows)


def test_chunk_starts_follow_the_pieces_through_the_chunks():
    specs = [
        OutputShard(0, "a.tar", 0, 5, pieces=[(0, 0, 5)]),
        OutputShard(1, "b.tar", 5, 5, pieces=[(0, 5, 7), (1, 0, 3)]),
        OutputShard(2, "c.tar", 10, 4, pieces=[(1, 3, 4), (3, 0, 3)]),
    ]
    assert tasks.chunk_starts(specs) == {0: 0, 1: 7, 3: 11}
