"""What a run to s3:// costs, as the S3 server sees it: each output byte uploaded once, nothing copied, no
HeadBucket, nothing left behind; and the report's per-storage figures agree with the server's.

What is counted: every request of the run to the test's bucket, seen by `S3Proxy` in front of the S3
server (independently of raymerge's own counters). "Uploaded" is the object data of every PutObject and
UploadPart to the output's keys (the manifest included), held to 1.05x the output; the run's bookkeeping
beside it (pending records, run marks, LeRobot's per-episode stats in scratch: the `.raymerge-` prefixes) is
counted as well, in a total held to 1.10x, which it nears only on outputs as small as these; "output bytes"
the sizes of the objects under the output prefix after the run. For text, "bytes read" is the object data of every GetObject of
an input key (format detection's first bytes included) over the inputs' sizes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raymerge import api
from raymerge.lerobot import samples as lerobot_samples
from raymerge.storage import MANIFEST
from raymerge.text import samples as text_samples
from raymerge.webdataset import samples as wds_samples
from tests.s3proxy import COPIES, WRITES, S3Proxy

MAX_UPLOADED_PER_OUTPUT_BYTE = 1.05
MAX_UPLOADED_WITH_BOOKKEEPING = 1.10
MAX_READ_PER_INPUT_BYTE = 1.10


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A WebDataset (images, and captions in shuffled key order), two JSON-lines files, two LeRobot datasets
    (v3.0 and v2.1) whose videos are most of their bytes, as real datasets' are."""
    root = tmp_path_factory.mktemp("s3-cost")
    keys = wds_samples.keys(400)
    wds_samples.write_shards(root / "images", wds_samples.image_samples(keys, 20_000), 4)
    wds_samples.write_shards(root / "captions", wds_samples.caption_samples(wds_samples.shuffled(keys)), 2)
    text_samples.write_jsonl(root / "a.jsonl", text_samples.pairs("a", 20_000))
    text_samples.write_jsonl(root / "b.jsonl", text_samples.pairs("b", 10_000))
    for name, version, seed in (("robot-a", "v3.0", 0), ("robot-b", "v2.1", 1)):
        lerobot_samples.make(
            None,
            str(root / name),
            version=version,
            lengths=(50,) * 4,
            cameras=1,
            height=112,
            width=144,
            grain=40,
            seed=seed,
        )
    return root


@pytest.fixture
def proxy(s3_endpoint):
    with S3Proxy(int(s3_endpoint.rsplit(":", 1)[1])) as p:
        yield p


def _config(family: str, bucket: str, options: dict, fmt: str = "jsonl") -> dict:
    def loc(path: str, **extra) -> dict:
        return {"path": f"s3://{bucket}/{path}", "storage_options": options, **extra}

    if family == "wdsconcat":
        return {
            "kind": "webdataset",
            "operation": "concat",
            "inputs": [loc("in/images"), loc("in/captions")],
            "output": loc("out/wds-concat", maxcount=150),
            "on_duplicate_key": "prefix",
        }
    if family == "lerobotsplit":
        return {
            "kind": "lerobot",
            "operation": "split",
            "inputs": [loc("in/robot-a")],
            "split": {"fractions": {"train": 0.75, "val": 0.25}, "seed": 0},
            "output": loc("out/robot-split"),
        }
    if family == "webdataset":
        return {
            "kind": "webdataset",
            "operation": "join",
            "inputs": [loc("in/images"), loc("in/captions")],
            "output": loc("out/wds", maxcount=150),
        }
    if family == "text":
        return {
            "kind": "text",
            "operation": "concat",
            "inputs": [loc("in/a.jsonl"), loc("in/b.jsonl")],
            "output": loc(f"out/merged.{fmt}"),
        }
    return {
        "kind": "lerobot",
        "operation": "merge",
        "inputs": [loc("in/robot-a"), loc("in/robot-b")],
        "output": loc("out/robot"),
    }


# family, executor and (text) output format of each case
CASES = [
    "webdataset ray",
    "wdsconcat in-process",
    "text in-process jsonl",
    "text ray json",
    "text in-process parquet",
    "lerobot in-process",
    "lerobotsplit in-process",
]


@pytest.mark.parametrize("case", CASES)
def test_a_run_to_s3_uploads_each_output_byte_once_and_copies_nothing(ray_address, s3, proxy, inputs, case):
    family, executor, fmt = [*case.split(), ""][:3]
    fs, bucket = s3["fs"], s3["bucket"]
    fs.put(f"{inputs}/", f"{bucket}/in/", recursive=True)
    cfg = _config(family, bucket, {"endpoint_url": proxy.endpoint}, fmt)
    out = cfg["output"]["path"].removeprefix(f"s3://{bucket}/")
    listings = []
    for overwrite in (False, True):
        proxy.reset()
        report = api.run(cfg, overwrite=overwrite, executor=executor)
        fs.invalidate_cache()
        objects = {p: i["size"] for p, i in fs.find(f"{bucket}/{out}", detail=True).items()}
        listings.append(sorted(objects))
        output_bytes = sum(objects.values())
        seen = proxy.counts(bucket)
        print(
            f"{family} {fmt} {'--overwrite' if overwrite else 'fresh'}: {len(objects)} objects, {output_bytes} bytes, "
            f"uploaded {proxy.uploaded(bucket) / output_bytes:.3f}x, requests {dict(seen)}"
        )  # figures for the docs

        # The report's figures are the server's.
        (name,) = [n for n in report.storage if n.startswith(f"s3://{bucket}")]
        counted = report.storage[name]
        assert counted["requests"] == dict(seen)
        assert counted["bytes_written"] == proxy.uploaded(bucket)
        assert counted["bytes_read"] == sum(r.response_bytes for r in proxy.recorded(bucket) if r.op == "GetObject")
        assert counted["bytes_copied"] == 0

        assert not [r for r in proxy.recorded(bucket) if r.op in COPIES], "no server-side copy"
        assert seen["HeadBucket"] == 0
        assert not fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads")
        assert not [p for p in fs.find(f"{bucket}/out") if ".raymerge-" in p], "no pending, staging or scratch left"
        if family != "text":
            manifest = json.loads(fs.cat_file(f"{bucket}/{out}/{MANIFEST}"))
            assert manifest["report"]["storage"][name]["bytes_written"] > 0
        payload = sum(r.payload for r in proxy.recorded(bucket) if r.op in WRITES and ".raymerge-" not in r.key)
        assert payload / output_bytes <= MAX_UPLOADED_PER_OUTPUT_BYTE
        assert proxy.uploaded(bucket) / output_bytes <= MAX_UPLOADED_WITH_BOOKKEEPING
        if family == "text":
            names = [i["path"].removeprefix(f"s3://{bucket}/") for i in cfg["inputs"]]
            read = sum(r.response_bytes for r in proxy.recorded(bucket) if r.op == "GetObject" and r.key in names)
            input_bytes = sum(fs.size(f"{bucket}/{n}") for n in names)
            print(f"text {fmt}: read {read / input_bytes:.3f}x the input")
            assert read / input_bytes <= MAX_READ_PER_INPUT_BYTE
            assert not [r for r in proxy.recorded(bucket) if r.op == "HeadObject" and r.key in names], (
                "no HEAD per input"
            )
    assert listings[0] == listings[1], "the replaced output has exactly the new objects"
