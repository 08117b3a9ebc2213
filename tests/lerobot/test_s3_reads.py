"""A LeRobot v3.0 merge from s3:// reads each input byte about once (they were read about twice: probing
fetched every mp4 whole, then the remux fetched it again).

What is counted: the object data of every GetObject the run sends for the inputs' keys, seen by `S3Proxy` in
front of the S3 server (independently of raymerge's own counters): videos, data files and metadata alike, no
part set aside. "Input bytes" are the sizes of all input objects (every one is needed: a selection that
starts mid-file still needs that file's `moov` box and the group of pictures the cut falls in). The videos
are most of the bytes, as in real datasets. Input `b` holds episodes that start between keyframes: selecting
from its second episode on makes the merge re-encode a cut group of pictures.
"""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from raymerge import api
from raymerge.lerobot import samples
from tests.lerobot import util
from tests.s3proxy import S3Proxy

MAX_READ_PER_INPUT_BYTE = 1.10


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("s3-reads")
    for name, seed, aligned in (("a", 0, True), ("b", 1, False)):
        samples.make(
            None,
            str(root / name),
            version="v3.0",
            lengths=(31, 25, 30, 20),
            cameras=1,
            height=64,
            width=96,
            grain=40,
            seed=seed,
            keyframe_aligned=aligned,
            gop=6,
        )
    return root


@pytest.fixture
def proxy(s3_endpoint):
    with S3Proxy(int(s3_endpoint.rsplit(":", 1)[1])) as p:
        yield p


@pytest.mark.parametrize(("to", "episodes"), [("local", None), ("s3", None), ("local", "1:"), ("s3", "1:")])
def test_a_merge_reads_each_input_byte_about_once(ray_address, s3, proxy, inputs, tmp_path, to, episodes):
    fs, bucket = s3["fs"], s3["bucket"]
    fs.put(f"{inputs}/", f"{bucket}/in/", recursive=True)
    sizes = {p.split("/", 1)[1]: i["size"] for p, i in fs.find(f"{bucket}/in", detail=True).items()}
    opts = {"endpoint_url": proxy.endpoint}
    out = str(tmp_path / "out") if to == "local" else f"s3://{bucket}/out"
    cfg = {
        "kind": "lerobot",
        "operation": "merge",
        "inputs": [
            {"path": f"s3://{bucket}/in/a", "storage_options": opts},
            {"path": f"s3://{bucket}/in/b", "storage_options": opts, **({"episodes": episodes} if episodes else {})},
        ],
        "output": {"path": out, **({"storage_options": opts} if to == "s3" else {})},
    }
    proxy.reset()
    report = api.run(cfg)
    read: collections.Counter[str] = collections.Counter()
    for r in proxy.recorded(bucket):
        if r.op == "GetObject" and r.key.startswith("in/"):
            read["mp4" if r.key.endswith(".mp4") else "other"] += r.response_bytes
    videos = sum(n for k, n in sizes.items() if k.endswith(".mp4"))
    ratio, video_ratio = sum(read.values()) / sum(sizes.values()), read["mp4"] / videos
    print(f"to {to}, b {episodes}: read {ratio:.3f}x the input bytes, {video_ratio:.3f}x the video bytes")  # docs
    assert video_ratio <= MAX_READ_PER_INPUT_BYTE
    assert ratio <= MAX_READ_PER_INPUT_BYTE
    assert (report.details["episodes_reencoded"] > 0) == bool(episodes), "cuts between keyframes re-encode"
    if to == "local":
        b_episodes = [1, 2, 3] if episodes else [0, 1, 2, 3]
        util.check_merged(Path(out), [(inputs / "a", [0, 1, 2, 3]), (inputs / "b", b_episodes)], 1, bool(episodes))
