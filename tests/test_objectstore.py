"""The object-store commit: outputs uploaded once to their final keys, invisible until the commit, which
replaces an old output without ever losing it before it starts; and every request counted, none wasted.

Requests are seen by `S3Proxy`, between s3fs and the S3 server, independently of raymerge's own counters.
"""

from __future__ import annotations

import json
import os
import pickle

import pytest

from raymerge import storage, usage
from raymerge.errors import RunFailed
from raymerge.executor import Executor
from raymerge.report import Report
from raymerge.s3commit import multipart_etag
from raymerge.storage import MANIFEST, Staging
from tests.s3proxy import S3Proxy

BIG = 12 * 2**20  # three parts of the 5 MiB block size used below


@pytest.fixture
def proxy(s3_endpoint):
    with S3Proxy(int(s3_endpoint.rsplit(":", 1)[1])) as p:
        yield p


@pytest.fixture
def out(s3, proxy):
    """An old folder output (with its manifest) at s3://bucket/ds/out, reached through the proxy."""
    fs, bucket = s3["fs"], s3["bucket"]
    old = {"keep.txt": b"old keep", "gone.txt": b"old gone", "sub/deep.bin": b"old deep", MANIFEST: b'{"old": 1}'}
    for name, data in old.items():
        fs.pipe(f"{bucket}/ds/out/{name}", data)
    proxy.reset()
    return {
        "url": f"s3://{bucket}/ds/out",
        "key": "ds/out",
        "options": {"endpoint_url": proxy.endpoint},
        "old": old,
        **s3,
    }


def _tree(fs, root: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    return {p[len(root) + 1 :]: fs.cat_file(p) for p in sorted(fs.find(root))}


def _uploads(fs, bucket: str) -> list[str]:
    return [u["Key"] for u in fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])]


def _siblings(fs, bucket: str) -> list[str]:
    fs.invalidate_cache()
    return sorted(p for p in fs.find(f"{bucket}/ds") if ".raymerge-" in p)


def _write_all_ways(stage: Staging, tmp_path) -> dict[str, bytes]:
    """Every way a family writes a file: open (text and binary, one part and several), pipe, put, touch."""
    fs = stage.fs
    big = os.urandom(BIG)
    with fs.open(storage.join(stage.path, "keep.txt"), "w") as f:
        f.write("new keep")
    with fs.open(storage.join(stage.path, "data/big.bin"), "wb", block_size=5 * 2**20) as f:
        for i in range(0, BIG, 2**20):
            f.write(big[i : i + 2**20])
    fs.pipe_file(storage.join(stage.path, "piped.bin"), b"piped")
    local = tmp_path / "video.mp4"
    local.write_bytes(b"\0\0\0\x18ftypmp42" * 100)
    fs.makedirs(storage.join(stage.path, "videos"), exist_ok=True)
    fs.put_file(str(local), storage.join(stage.path, "videos/video.mp4"))
    fs.touch(storage.join(stage.path, "empty"))
    fs.pipe_file(storage.join(stage.scratch, "part-0"), b"intermediate")
    return {
        "keep.txt": b"new keep",
        "data/big.bin": big,
        "piped.bin": b"piped",
        "videos/video.mp4": local.read_bytes(),
        "empty": b"",
    }


def test_output_is_uploaded_once_to_its_final_keys_and_appears_only_at_commit(out, proxy, tmp_path):
    fs, bucket = out["fs"], out["bucket"]
    root = f"{bucket}/ds/out"
    with Staging(out["url"], out["options"], overwrite=True) as stage:
        new = _write_all_ways(stage, tmp_path)
        # Before the commit: the old output, byte for byte, its manifest included; nothing of the new one.
        assert _tree(fs, root) == out["old"]
        assert sorted(_uploads(fs, bucket)) == sorted(f"ds/out/{n}" for n in new if n != "empty")
        assert not any(".raymerge-staging-" in p for p in _siblings(fs, bucket))
        assert stage.written_bytes() == sum(map(len, new.values()))
        proxy.reset()
        stage.commit({"new": 1})
    assert _tree(fs, root) == {**new, MANIFEST: b'{\n  "new": 1\n}'}, "stale objects of the old output are deleted"
    assert _uploads(fs, bucket) == [] and _siblings(fs, bucket) == []

    # The commit's order, as the server saw it.
    commit = proxy.recorded(bucket)
    ops = [(r.op, r.key) for r in commit]
    first_complete = next(i for i, (op, _) in enumerate(ops) if op == "CompleteMultipartUpload")
    last_complete = max(i for i, (op, _) in enumerate(ops) if op == "CompleteMultipartUpload")
    manifest_gone = ops.index(("DeleteObject", f"ds/out/{MANIFEST}"))
    manifest_back = ops.index(("PutObject", f"ds/out/{MANIFEST}"))
    stale = next(i for i, r in enumerate(commit) if r.op == "DeleteObjects" and "ds/out/gone.txt" in r.deleted)
    assert manifest_gone < first_complete and last_complete < manifest_back < stale
    # Old objects that were not replaced are deleted, and only they; nothing is copied.
    assert sorted(k for r in commit if r.op == "DeleteObjects" for k in r.deleted if k.startswith("ds/out/")) == [
        "ds/out/gone.txt",
        "ds/out/sub/deep.bin",
    ]
    assert not [r for r in commit if r.op in ("CopyObject", "UploadPartCopy", "HeadBucket")]


def test_payload_bytes_are_uploaded_exactly_once(out, proxy, tmp_path):
    fs, bucket = out["fs"], out["bucket"]
    with Staging(out["url"], out["options"], overwrite=True) as stage:
        new = _write_all_ways(stage, tmp_path)
        stage.commit({"new": 1})
    to_output = sum(
        r.payload for r in proxy.recorded(bucket) if r.op in ("PutObject", "UploadPart") and r.under("ds/out")
    )
    manifest = len(fs.cat_file(f"{bucket}/ds/out/{MANIFEST}"))
    assert to_output == sum(map(len, new.values())) + manifest
    everything = proxy.uploaded(bucket)
    records = everything - to_output - len(b"intermediate")
    assert 0 < records < 400 * len(new), "the pending records are small"
    assert proxy.counts(bucket)["UploadPart"] == 3 + 3  # big.bin in three parts; one per other file, none if empty


def test_single_file_output_is_replaced_at_commit(s3, proxy):
    fs, bucket = s3["fs"], s3["bucket"]
    fs.pipe(f"{bucket}/ds/merged.jsonl", b'{"old": 1}\n')
    url, options = f"s3://{bucket}/ds/merged.jsonl", {"endpoint_url": proxy.endpoint}
    with Staging(url, options, overwrite=True, is_file=True) as stage:
        with stage.fs.open(stage.path, "wb") as f:
            f.write(b'{"new": 1}\n')
        fs.pipe_file(storage.join(stage.dir, "parts", "part-0"), b"a part beside the output")  # as families do
        assert fs.cat(f"{bucket}/ds/merged.jsonl") == b'{"old": 1}\n'
        stage.commit()
    fs.invalidate_cache()
    assert fs.cat(f"{bucket}/ds/merged.jsonl") == b'{"new": 1}\n'
    assert sorted(fs.find(f"{bucket}/ds")) == [f"{bucket}/ds/merged.jsonl"]
    assert _uploads(fs, bucket) == []


def test_single_file_output_that_was_never_written_fails_the_commit(s3):
    url, options = f"s3://{s3['bucket']}/ds/merged.jsonl", s3["storage_options"]
    with pytest.raises(FileNotFoundError, match="wrote no output file"), Staging(url, options, is_file=True) as stage:
        stage.commit()
    assert not s3["fs"].exists(f"{s3['bucket']}/ds/merged.jsonl")


def test_a_failed_run_aborts_its_uploads_and_leaves_the_old_output(out, tmp_path):
    fs, bucket = out["fs"], out["bucket"]
    with pytest.raises(RuntimeError, match="worker died"), Staging(out["url"], out["options"], overwrite=True) as stage:
        _write_all_ways(stage, tmp_path)
        raise RuntimeError("worker died")
    assert _tree(fs, f"{bucket}/ds/out") == out["old"]
    assert _uploads(fs, bucket) == [] and _siblings(fs, bucket) == []


def test_a_half_written_file_is_not_left_pending(out):
    fs, bucket = out["fs"], out["bucket"]
    stage = Staging(out["url"], out["options"], overwrite=True).open()
    try:
        with pytest.raises(ValueError, match="bad record"), stage.fs.open(f"{stage.path}/x.bin", "wb") as f:
            f.write(os.urandom(6 * 2**20))  # one part sent
            raise ValueError("bad record")
        assert _uploads(fs, bucket) == []
        assert stage.written_bytes() == 0
    finally:
        stage.abort()


def test_the_next_run_cleans_up_what_a_killed_run_left(out, tmp_path):
    fs, bucket = out["fs"], out["bucket"]
    killed = Staging(out["url"], out["options"], overwrite=True).open()
    _write_all_ways(killed, tmp_path)
    with killed.fs.open(f"{killed.path}/unfinished.bin", "wb", block_size=5 * 2**20) as f:
        f.write(os.urandom(6 * 2**20))
        f.flush()  # a part sent, then the process dies: an upload without a record
        f.closed = True
    assert _uploads(fs, bucket) and _siblings(fs, bucket)
    # ... the process is gone: no commit, no abort. The next run starts:
    Staging(out["url"], out["options"], overwrite=True).open().abort()
    assert _uploads(fs, bucket) == [] and _siblings(fs, bucket) == []
    assert _tree(fs, f"{bucket}/ds/out") == out["old"]


def test_pending_filesystem_travels_to_ray_workers_and_tasks_report_their_usage(ray_address, out, proxy):
    fs, bucket = out["fs"], out["bucket"]
    stage = Staging(out["url"], out["options"], overwrite=True).open()
    try:
        assert pickle.loads(pickle.dumps(stage.fs)).final_path(f"{stage.path}/a") == f"{bucket}/ds/out/a"
        proxy.reset()
        with Executor.ray() as ex:
            sizes = list(
                ex.map(_write_in_task, [(stage.fs, f"{stage.path}/part-{i}.bin", 1000 * (i + 1)) for i in range(4)])
            )
            used = ex.usage()
        assert sizes == [1000, 2000, 3000, 4000]
        assert stage.written_bytes() == 10_000
        (name,) = used
        assert name == f"s3://{bucket} at {proxy.endpoint}"
        counts = proxy.counts(bucket)
        assert used[name]["requests"] == {k: counts[k] for k in ("CreateMultipartUpload", "UploadPart", "PutObject")}
        assert used[name]["bytes_written"] == proxy.uploaded(bucket)
        stage.commit({})
    finally:
        stage.abort()
    assert sorted(fs.ls(f"{bucket}/ds/out", detail=False, refresh=True)) == [
        f"{bucket}/ds/out/{n}" for n in (*(f"part-{i}.bin" for i in range(4)), MANIFEST)
    ]


def _write_in_task(fs, path: str, size: int) -> int:
    with fs.open(path, "wb") as f:
        f.write(b"x" * size)
    return size


def test_counters_agree_with_the_server_and_no_request_is_wasted(out, proxy, tmp_path):
    bucket = out["bucket"]
    before = usage.snapshot()
    with Staging(out["url"], out["options"], overwrite=True) as stage:
        new = _write_all_ways(stage, tmp_path)
        stage.commit({"new": 1})
    counted = usage.since(before)[f"s3://{bucket} at {proxy.endpoint}"]
    seen = proxy.counts(bucket)
    assert counted["requests"] == dict(seen)
    assert counted["bytes_written"] == proxy.uploaded(bucket)
    assert counted["bytes_read"] == sum(r.response_bytes for r in proxy.recorded(bucket) if r.op == "GetObject")
    assert counted["bytes_copied"] == 0
    # No HeadBucket at all; one HeadObject (is the output a file?); per output file: its upload
    # (create, parts, complete), its record (put, get) and nothing else.
    assert seen["HeadBucket"] == 0 and seen["HeadObject"] == 1
    files = len(new)
    assert seen["CompleteMultipartUpload"] == files - 1  # the empty file is put at commit, without an upload
    assert seen["GetObject"] == files
    assert seen["ListObjectsV2"] <= 5 and seen["ListMultipartUploads"] <= 4
    # Deletes name only keys that exist: the old manifest, the stale objects, the run's records and scratch.
    existed = {f"ds/out/{n}" for n in out["old"]} | {r.key for r in proxy.recorded(bucket) if r.op == "PutObject"}
    deleted = [k for r in proxy.recorded(bucket) if r.op == "DeleteObjects" for k in r.deleted]
    deleted += [r.key for r in proxy.recorded(bucket) if r.op == "DeleteObject"]
    assert set(deleted) <= existed and len(deleted) == len(set(deleted))


def test_copy_into_the_output_is_a_pending_server_side_copy(out, proxy):
    fs, bucket = out["fs"], out["bucket"]
    fs.pipe(f"{bucket}/src/video.mp4", b"v" * 3000)
    before = usage.snapshot()
    with Staging(out["url"], out["options"], overwrite=True) as stage:
        stage.fs.copy(f"{bucket}/src/video.mp4", f"{stage.path}/videos/video.mp4")
        assert _tree(fs, f"{bucket}/ds/out") == out["old"]
        stage.commit({})
    assert fs.cat(f"{bucket}/ds/out/videos/video.mp4") == b"v" * 3000
    assert proxy.counts(bucket)["UploadPartCopy"] == 1
    assert usage.since(before)[f"s3://{bucket} at {proxy.endpoint}"]["bytes_copied"] == 3000


def test_makedirs_and_recursive_delete_ask_nothing_needless(s3, proxy):
    fs, _ = storage.resolve(f"s3://{s3['bucket']}/x", {"endpoint_url": proxy.endpoint})
    bucket = s3["bucket"]
    for name in ("d/a", "d/b/c", "d.txt", "dd/e"):
        s3["fs"].pipe(f"{bucket}/{name}", b"1")
    proxy.reset()
    fs.makedirs(f"{bucket}/d/new/deeper", exist_ok=True)
    fs.rm(f"{bucket}/d", recursive=True)
    assert [r.op for r in proxy.recorded()] == ["ListObjectsV2", "DeleteObjects"]
    (delete,) = [r for r in proxy.recorded() if r.op == "DeleteObjects"]
    assert sorted(delete.deleted) == ["d/a", "d/b/c"]
    s3["fs"].invalidate_cache()
    assert sorted(s3["fs"].find(bucket)) == [f"{bucket}/d.txt", f"{bucket}/dd/e"]


def test_report_shows_each_storage_cost():
    report = Report("webdataset", "join", "s3://b/out")
    report.storage = {
        "local": {"bytes_written": 3 * 2**20},
        "s3://b at http://127.0.0.1:9000": {
            "bytes_read": 2**20,
            "bytes_written": 2**21,
            "bytes_copied": 0,
            "retries": 2,
            "requests": {"UploadPart": 4, "GetObject": 7, "ListObjectsV2": 1},
        },
    }
    lines = report.render().splitlines()
    assert "  storage local: written 3.0 MiB" in lines
    assert (
        "  storage s3://b at http://127.0.0.1:9000: read 1.0 MiB, written 2.0 MiB, copied 0 B; "
        "12 requests (GetObject 7, UploadPart 4, ListObjectsV2 1), 2 retried"
    ) in lines
    assert json.loads(json.dumps(report.to_dict()))["storage"] == report.storage


def test_an_upload_completed_by_an_attempt_whose_answer_was_lost_still_commits(s3, out):
    fs, bucket = out["fs"], out["bucket"]
    with Staging(out["url"], out["options"], overwrite=True) as stage:
        with stage.fs.open(f"{stage.path}/big.bin", "wb", block_size=5 * 2**20) as f:
            f.write(os.urandom(7 * 2**20))
        (pending,) = stage._remote.pending()
        # The server completed it; its answer never came back, so the commit asks again.
        key = pending.path.split("/", 1)[1]
        fs.call_s3(
            "complete_multipart_upload",
            Bucket=bucket,
            Key=key,
            UploadId=pending.upload_id,
            MultipartUpload={"Parts": pending.parts},
        )
        assert fs.info(pending.path, refresh=True)["ETag"] == multipart_etag(pending.parts)
        stage.commit({})
    assert fs.size(f"{bucket}/ds/out/big.bin") == 7 * 2**20


def test_a_run_whose_uploads_another_run_removed_refuses_to_commit(out):
    fs, bucket = out["fs"], out["bucket"]
    first = Staging(out["url"], out["options"], overwrite=True).open()
    first.fs.pipe_file(f"{first.path}/a.txt", b"first")
    second = Staging(out["url"], out["options"], overwrite=True).open()  # cleans up what looks left behind
    try:
        first.fs.pipe_file(f"{first.path}/b.txt", b"first, after")
        with pytest.raises(RunFailed, match=r"another run to this output started .* nothing committed"):
            first.commit({"first": 1})
        assert _tree(fs, f"{bucket}/ds/out") == out["old"]
        second.fs.pipe_file(f"{second.path}/c.txt", b"second")
        second.commit({"second": 1})
    finally:
        first.abort()
        second.abort()
    assert _tree(fs, f"{bucket}/ds/out") == {"c.txt": b"second", MANIFEST: b'{\n  "second": 1\n}'}


def test_tasks_upload_the_parts_of_one_output_file_themselves(ray_address, s3, proxy, tmp_path):
    fs, bucket = s3["fs"], s3["bucket"]
    url, options = f"s3://{bucket}/ds/merged.jsonl", {"endpoint_url": proxy.endpoint}
    blocks = [b"a" * (5 * 2**20), b"b" * (5 * 2**20 + 3), b"c" * 10]
    with Staging(url, options, is_file=True) as stage:
        upload = stage.part_upload(stage.path)
        with Executor.ray() as ex:
            parts = list(ex.map(upload.put, [(i + 1, block) for i, block in enumerate(blocks)], ordered=False))
        upload.finish([part for _, part in parts])
        assert not fs.exists(f"{bucket}/ds/merged.jsonl")
        assert stage.written_bytes() == sum(map(len, blocks))
        stage.commit()
    assert fs.cat(f"{bucket}/ds/merged.jsonl") == b"".join(blocks)
    assert proxy.uploaded(bucket) - sum(map(len, blocks)) < 1000, "each block once; only its record beside"
    local = Staging(str(tmp_path / "merged.jsonl"), is_file=True)
    assert local.part_upload(local.path) is None, "on local disk the blocks are files to join"


def test_a_folder_output_replacing_a_file_removes_the_file_after_its_manifest(s3):
    fs, bucket = s3["fs"], s3["bucket"]
    fs.pipe(f"{bucket}/ds/out", b"a file where the folder goes")
    with Staging(f"s3://{bucket}/ds/out", s3["storage_options"], overwrite=True) as stage:
        stage.fs.pipe_file(f"{stage.path}/a.txt", b"A")
        stage.commit({})
    fs.invalidate_cache()
    assert sorted(fs.find(f"{bucket}/ds")) == [f"{bucket}/ds/out/a.txt", f"{bucket}/ds/out/{MANIFEST}"]
