"""Text outputs on object storage: the same bytes as on local disk, under either executor, written once.

JSON-lines and JSON targets are multipart uploads whose parts (consecutive blocks, >= 5 MiB but the last) are
sent by their own tasks; the other targets are written from the blocks' results, never from part files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from raymerge import api, storage
from raymerge.text import readers, sources
from raymerge.text.readers import _jsonl_bytes
from raymerge.text.samples import pairs, write_jsonl
from raymerge.text.sources import Chunk

TARGETS = {
    "jsonl": "merged.jsonl",
    "json": "merged.json",
    "parquet": "merged.parquet",
    "hf": "hub",
    "save_to_disk": "disk",
}


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """Two inputs whose merge is about 14 MiB of JSON lines (several upload parts), with duplicates for dedup to
    drop, so some blocks shrink."""
    root = tmp_path_factory.mktemp("s3-outputs")
    long = pairs("long", 5000)
    long = long.set_column(1, "output", [[f"{a} " + "x" * 2500 for a in long["output"].to_pylist()]])
    write_jsonl(root / "long.jsonl", long)
    write_jsonl(root / "short.jsonl", pairs("short", 3000).slice(0, 2000))
    write_jsonl(root / "again.jsonl", pairs("short", 3000))  # 2000 of these rows repeat short.jsonl's
    return root


def _config(root: str, options: dict) -> dict:
    def loc(name: str, **extra) -> dict:
        return {"path": f"{root}/{name}", "storage_options": options, **extra}

    return {
        "kind": "text",
        "operation": "concat",
        "dedup": "exact",
        "inputs": [loc("in/long.jsonl"), loc("in/short.jsonl"), loc("in/again.jsonl")],
        "output": loc("out/" + TARGETS["jsonl"]),
        "exports": [
            loc("out/" + TARGETS["json"]),
            loc("out/" + TARGETS["parquet"]),
            loc("out/" + TARGETS["hf"], format="hf", max_shard_size="4MB"),
            loc("out/" + TARGETS["save_to_disk"], format="save_to_disk", max_shard_size="4MB"),
        ],
    }


def _digests(fs, root: str) -> dict[str, str]:
    """sha256 of every file below `root`, by relative name; the run's report is left out."""
    fs.invalidate_cache()
    return {
        k[len(root) :]: hashlib.sha256(fs.cat_file(k)).hexdigest()
        for k in sorted(fs.find(root))
        if not k.endswith(storage.MANIFEST)
    }


@pytest.fixture(scope="module")
def local_digests(big, tmp_path_factory, ray_address) -> dict[str, dict[str, str]]:
    """Every target's files from a local run, by executor."""
    out = {}
    for executor in ("in-process", "ray"):
        root = tmp_path_factory.mktemp(f"s3-outputs-local-{executor}")
        (root / "in").symlink_to(big)
        api.run(_config(str(root), {}), executor=executor)
        fs, path = storage.resolve(str(root / "out"))
        out[executor] = _digests(fs, path)
    return out


def _files(digests: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in digests.items() if k.count("/") == 1}


def test_file_targets_are_the_same_bytes_under_either_executor(local_digests):
    """The single-file targets do not depend on how many blocks the executor cut the output into. (The dataset
    folders' shard boundaries follow the blocks' summed Arrow bytes, which vary by a few bytes with the cut.)"""
    assert _files(local_digests["ray"]) == _files(local_digests["in-process"])


@pytest.mark.parametrize("executor", ["in-process", "ray"])
def test_s3_outputs_are_the_local_bytes(ray_address, s3, big, local_digests, executor):
    fs, bucket, options = s3["fs"], s3["bucket"], s3["storage_options"]
    fs.put(f"{big}/", f"{bucket}/in/", recursive=True)
    cfg = _config(f"s3://{bucket}", options)
    for overwrite in (False, True):
        api.run(cfg, overwrite=overwrite, executor=executor)
        assert _digests(fs, f"{bucket}/out") == local_digests[executor]
    for name in ("merged.jsonl", "merged.json"):
        etag = fs.info(f"{bucket}/out/{name}")["ETag"].strip('"')
        assert int(etag.rsplit("-", 1)[1]) >= 2, f"{name} was uploaded in several parts"
    assert not fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads")
    assert not [k for k in fs.find(f"{bucket}/out") if ".raymerge-" in k], "no scratch, staging or pending left"


def test_an_empty_output_on_s3(ray_address, s3, tmp_path):
    fs, bucket, options = s3["fs"], s3["bucket"], s3["storage_options"]
    (tmp_path / "nothing.jsonl").write_bytes(b"")
    fs.put(str(tmp_path / "nothing.jsonl"), f"{bucket}/in/empty.jsonl")
    for fmt, expected in (("jsonl", b""), ("json", b"[\n]\n")):
        cfg = {
            "kind": "text",
            "operation": "concat",
            "inputs": [{"path": f"s3://{bucket}/in/empty.jsonl", "storage_options": options}],
            "output": {"path": f"s3://{bucket}/out/empty.{fmt}", "storage_options": options},
        }
        api.run(cfg, executor="in-process")
        local = tmp_path / f"empty.{fmt}"
        api.run({**cfg, "inputs": [{"path": str(tmp_path / "nothing.jsonl")}], "output": {"path": str(local)}})
        assert fs.cat_file(f"{bucket}/out/empty.{fmt}") == local.read_bytes() == expected


@pytest.mark.parametrize("tail", [1, 7, 64 << 10])
def test_jsonl_chunks_read_each_line_once_by_ranges(tmp_path, monkeypatch, tail):
    """Chunks cut anywhere (mid-line, on a newline, past lines longer than the read-ahead) give every line once."""
    monkeypatch.setattr(readers, "LINE_TAIL", tail)
    lines = [b'{"input":"' + b"q" * n + b'","output":"a"}\n' for n in (0, 1, 30, 5, 200, 2, 90, 0, 17)]
    path = tmp_path / "lines.jsonl"
    path.write_bytes(b"".join(lines))
    fs, p = storage.resolve(str(path))
    size = path.stat().st_size
    for step in (1, 2, 13, 40, 64, size):
        chunks = [Chunk("jsonl", p, s, min(s + step, size), size=size) for s in range(0, size, step)]
        assert b"".join(_jsonl_bytes(fs, c) for c in chunks) == path.read_bytes()


def test_an_s3_input_is_opened_from_one_listing(s3, tmp_path):
    fs, bucket, options = s3["fs"], s3["bucket"], s3["storage_options"]
    write_jsonl(tmp_path / "a.jsonl", pairs("a", 10))
    fs.put(str(tmp_path / "a.jsonl"), f"{bucket}/in/a.jsonl")
    fs.put(str(tmp_path / "a.jsonl"), f"{bucket}/in/a.jsonl2")  # a sibling the prefix listing also finds
    fs.put(str(tmp_path / "a.jsonl"), f"{bucket}/in/dir/a.jsonl")
    s3fs_, path = storage.resolve(f"s3://{bucket}/in/a.jsonl", options)
    assert list(sources.list_input(s3fs_, path)) == [path]
    folder = sources.list_input(s3fs_, f"{bucket}/in/dir")
    assert list(folder) == [f"{bucket}/in/dir/a.jsonl"]
    assert sources.list_input(s3fs_, f"{bucket}/in/missing") == {}
    src = sources.open_source(s3fs_, path)
    assert [c.size for c in src.chunks] == [(tmp_path / "a.jsonl").stat().st_size]
    assert sources.fingerprint(src) == storage.fingerprint(s3fs_, path)
