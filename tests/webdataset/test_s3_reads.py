"""Runs from s3:// read each input byte about once: tar headers by range, members by their own ranges, and an
input's own index (Energon's `.nv-meta/index.sqlite`) instead of a scan where it has one.

What is counted: the object data of every GetObject the run sends for the inputs' keys, as `S3Proxy` sees it
in front of the S3 server (independently of raymerge's own counters): tar headers, payload, and any index
or metadata file read, nothing set aside. "Input bytes" are the sizes of the input tars.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from raymerge import api
from raymerge.webdataset import samples as S
from tests.s3proxy import S3Proxy
from tests.webdataset.util import read_samples

MAX_READ_PER_INPUT_BYTE = 1.10
IMAGE = 20_000


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Images (~20 KB + a label) in key order, captions for most keys in shuffled order, more images."""
    root = tmp_path_factory.mktemp("s3-reads")
    keys = S.keys(240)
    S.write_shards(root / "images", S.image_samples(keys, IMAGE), 3)
    S.write_shards(root / "captions", S.caption_samples(S.shuffled([k for i, k in enumerate(keys) if i % 9])), 2)
    S.write_shards(root / "more", S.image_samples(S.keys(120, "more/{i:06d}"), IMAGE), 2)
    return root


@pytest.fixture
def proxy(s3_endpoint):
    with S3Proxy(int(s3_endpoint.rsplit(":", 1)[1])) as p:
        yield p


def _read(proxy: S3Proxy, bucket: str) -> int:
    return sum(r.response_bytes for r in proxy.recorded(bucket) if r.op == "GetObject" and r.key.startswith("in/"))


def _tar_bytes(fs, bucket: str, cfg: dict) -> int:
    """The sizes of the tars of the inputs `cfg` names."""
    total = 0
    for inp in cfg["inputs"]:
        found = fs.find(inp["path"].removeprefix("s3://"), detail=True)
        total += sum(i["size"] for p, i in found.items() if p.endswith(".tar"))
    return total


def _indexed(inputs: Path, tmp_path: Path) -> Path:
    """The images resharded by raymerge: 6 shards with `.tar.idx`, `.nv-meta/index.sqlite` and `raymerge.json`."""
    first = tmp_path / "first"
    cfg = {"path": str(first), "maxcount": 40}
    api.run({"kind": "webdataset", "operation": "reshard", "inputs": [{"path": str(inputs / "images")}], "output": cfg})
    return first


def _config(operation: str, bucket: str, opts: dict, out: str) -> dict:
    remote = {"storage_options": opts}
    if operation == "join":
        inputs = [{"path": f"s3://{bucket}/in/images"}, {"path": f"s3://{bucket}/in/captions", "nonmatch": "none"}]
    else:
        inputs = [{"path": f"s3://{bucket}/in/images"}, {"path": f"s3://{bucket}/in/more"}]
    return {
        "kind": "webdataset",
        "operation": operation,
        "inputs": [{**i, **remote} for i in inputs],
        "output": {"path": out, "maxcount": 50, **(remote if out.startswith("s3://") else {})},
    }


@pytest.mark.parametrize("to", ["local", "s3"])
@pytest.mark.parametrize("operation", ["join", "concat"])
def test_a_run_reads_each_input_byte_about_once(ray_address, s3, proxy, inputs, tmp_path, operation, to):
    fs, bucket = s3["fs"], s3["bucket"]
    fs.put(f"{inputs}/", f"{bucket}/in/", recursive=True)
    out = str(tmp_path / "out") if to == "local" else f"s3://{bucket}/out"
    cfg = _config(operation, bucket, {"endpoint_url": proxy.endpoint}, out)
    proxy.reset()
    report = api.run(cfg)
    ratio = _read(proxy, bucket) / _tar_bytes(fs, bucket, cfg)
    gets = sum(1 for r in proxy.recorded(bucket) if r.op == "GetObject")
    print(f"{operation} to {to}: read {ratio:.3f}x the input bytes in {gets} GETs")  # figures for the docs
    assert ratio <= MAX_READ_PER_INPUT_BYTE
    assert report.rows_out == (240 if operation == "join" else 360)
    if to == "local":
        local = api.run(_config(operation, bucket, {"endpoint_url": proxy.endpoint}, str(tmp_path / "again")))
        assert local.rows_out == report.rows_out
        assert read_samples(tmp_path / "out") == read_samples(tmp_path / "again")


def test_an_energon_index_is_used_instead_of_a_scan(ray_address, s3, proxy, inputs, tmp_path):
    """A raymerge output (it carries `.nv-meta/index.sqlite`) joined again from S3: its index is read
    instead of its tar headers; the result is the same as from a scan."""
    fs, bucket = s3["fs"], s3["bucket"]
    first = _indexed(inputs, tmp_path)
    fs.put(f"{first}/", f"{bucket}/in/indexed/", recursive=True)
    fs.put(f"{inputs / 'captions'}/", f"{bucket}/in/captions/", recursive=True)
    opts = {"endpoint_url": proxy.endpoint}
    cfg = {
        "kind": "webdataset",
        "operation": "join",
        "inputs": [
            {"path": f"s3://{bucket}/in/indexed", "storage_options": opts},
            {"path": f"s3://{bucket}/in/captions", "storage_options": opts, "nonmatch": "skip"},
        ],
        "output": {"path": str(tmp_path / "out"), "maxcount": 50},
    }
    proxy.reset()
    report = api.run(cfg)
    gets = [r for r in proxy.recorded(bucket) if r.op == "GetObject" and r.key.startswith("in/indexed/")]
    assert any(r.key.endswith(".nv-meta/index.sqlite") for r in gets)
    assert "index" in report.details.get("input_indexes", {}).get("indexed", "")
    ratio = _read(proxy, bucket) / _tar_bytes(fs, bucket, cfg)
    print(f"join of an indexed input: read {ratio:.3f}x the input tar bytes")
    assert ratio <= MAX_READ_PER_INPUT_BYTE
    scanned = dict(cfg, inputs=[{"path": str(first)}, {"path": str(inputs / "captions"), "nonmatch": "skip"}])
    scanned["output"] = {"path": str(tmp_path / "scanned"), "maxcount": 50}
    api.run(scanned)
    assert read_samples(tmp_path / "out") == read_samples(tmp_path / "scanned")


def test_a_stale_index_is_ignored_with_its_reason(ray_address, s3, inputs, tmp_path):
    """An index that does not match the tar beside it (one shard rewritten after the index was made) is not
    used for that shard: it is scanned, and the report says why."""
    fs, bucket = s3["fs"], s3["bucket"]
    first = _indexed(inputs, tmp_path)
    rewritten = [(k, {**m, "cls": b"10"}) for k, m in S.image_samples(S.keys(40), IMAGE)]
    S.write_tar(first / "shard-000000.tar", rewritten)
    fs.put(f"{first}/", f"{bucket}/in/indexed/", recursive=True)
    cfg = {
        "kind": "webdataset",
        "operation": "reshard",
        "inputs": [{"path": f"s3://{bucket}/in/indexed", "storage_options": s3["storage_options"]}],
        "output": {"path": str(tmp_path / "out"), "maxcount": 1000},
    }
    report = api.run(cfg)
    reason = report.details["input_indexes"]["indexed"]
    print(reason)  # the example in docs/webdataset.md
    assert reason.startswith(".nv-meta/index.sqlite used for 5 shard(s); headers scanned instead: shard-000000.tar")
    written = read_samples(tmp_path / "out")
    assert [k for _, k, _ in written] == S.keys(240)
    assert dict(written[0][2])["part_a/000000.cls"] == b"10"


def test_a_long_name_shard_on_object_storage_is_read_as_a_file(ray_address, s3, tmp_path):
    """PAX headers are not plain ustar: the range scan hands such a shard to `tarfile`, which reads it whole,
    and the run gives what the same shard gives on local disk."""
    import io
    import tarfile

    fs, bucket = s3["fs"], s3["bucket"]
    local = tmp_path / "in"
    local.mkdir()
    with tarfile.open(local / "pax.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(3):
            key = f"{'deep/' * 30}sample-{i:03d}"  # longer than ustar's 100-byte name field
            for ext, body in (("txt", f"text {i}".encode()), ("cls", str(i).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    fs.put(f"{local}/", f"{bucket}/in/", recursive=True)
    opts = {"storage_options": {"endpoint_url": s3["endpoint_url"]}}
    reports = {}
    for where, path in (("s3", f"s3://{bucket}/in"), ("local", str(local))):
        cfg = {
            "kind": "webdataset",
            "operation": "reshard",
            "inputs": [{"path": path, **(opts if where == "s3" else {})}],
            "output": {"path": str(tmp_path / f"out-{where}")},
        }
        reports[where] = api.run(cfg)
    assert reports["s3"].rows_out == reports["local"].rows_out == 3
    assert read_samples(tmp_path / "out-s3") == read_samples(tmp_path / "out-local")
