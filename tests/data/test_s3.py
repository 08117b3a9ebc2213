"""The blocks on object storage (the loopback S3 server): read from s3://, and sinks whose outputs appear only
at the commit, complete, with nothing of the run left beside them."""

from __future__ import annotations

import sqlite3

import ray.data

import raymerge.data as rd
from raymerge import api
from raymerge.webdataset import samples as S
from tests.data.test_lerobot import FPS, LENGTHS, check_written, frame_rows, source  # noqa: F401  (a fixture)


def objects(s3, prefix: str) -> list[str]:
    return sorted(p[len(s3["bucket"]) + 1 :] for p in s3["fs"].find(f"{s3['bucket']}/{prefix}"))


def test_text_and_a_session_on_s3(ordered, s3, tmp_path):
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(9)]
    s3["fs"].pipe(f"{s3['bucket']}/in/qa.jsonl", "\n".join(map(str, rows)).replace("'", '"').encode())
    opts = s3["storage_options"]
    pairs = rd.read_text(f"s3://{s3['bucket']}/in/qa.jsonl", storage_options=opts)
    expected = [{"input": r["question"], "output": r["answer"]} for r in rows]
    assert pairs.take_all() == expected
    pairs.write_datasink(rd.FineFoundryDatasink(f"s3://{s3['bucket']}/out/ff.db", "qa", storage_options=opts))
    assert objects(s3, "") == ["in/qa.jsonl", "out/ff.db"]
    local = tmp_path / "ff.db"
    s3["fs"].get(f"{s3['bucket']}/out/ff.db", str(local))
    assert sqlite3.connect(local).execute("SELECT COUNT(*) FROM scraped_pairs").fetchone() == (9,)
    assert rd.read_finefoundry(f"s3://{s3['bucket']}/out/ff.db", "qa", storage_options=opts).take_all() == expected


def test_energon_shards_on_s3(ordered, s3):
    rows = [{"__key__": k, **{e: v for e, v in m.items()}} for k, m in S.image_samples(S.keys(9), size=32)]
    url = f"s3://{s3['bucket']}/energon"
    ray.data.from_items(rows).write_datasink(rd.EnergonDatasink(url, maxcount=4, storage_options=s3["storage_options"]))
    found = objects(s3, "")
    assert [f for f in found if f.endswith(".tar")] == [f"energon/shard-00000{i}.tar" for i in range(3)]
    assert "energon/.nv-meta/index.sqlite" in found and "energon/raymerge.json" in found
    assert all(f.startswith("energon/") for f in found)  # no staging, scratch or pending objects left
    back = ray.data.read_webdataset(url, filesystem=s3["fs"], decoder=None, file_extensions=["tar"]).take_all()
    assert [(r["__key__"], r["jpg"], r["cls"]) for r in back] == [(r["__key__"], r["jpg"], r["cls"]) for r in rows]


def test_lerobot_dataset_on_s3(ordered, s3, source, tmp_path):  # noqa: F811
    url = f"s3://{s3['bucket']}/robot"
    ray.data.from_items(frame_rows(source)).write_datasink(
        rd.LeRobotDatasink(url, fps=FPS, storage_options=s3["storage_options"])
    )
    assert all(f.startswith("robot/") for f in objects(s3, ""))
    copy = tmp_path / "copy"
    api.run(
        {
            "kind": "lerobot",
            "operation": "merge",
            "inputs": [{"path": url, "storage_options": s3["storage_options"]}],
            "output": {"path": str(copy)},
        }
    )
    check_written(copy, list(range(len(LENGTHS))))
