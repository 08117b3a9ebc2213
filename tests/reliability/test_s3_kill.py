"""SIGKILL of a whole `raymerge run --overwrite` to s3:// (the command, its own Ray and every worker) at
three moments: its first upload, half-way through its uploads, and its commit's first change under the
output prefix. Each time the old output is still there, byte for byte with its own manifest; the next
run succeeds and leaves no multipart upload and no pending, staging or scratch prefix behind. A kill
inside the commit window leaves a prefix without a manifest (never one that looks complete), which the
next run replaces the same way.

The moment is exact, not timed: `S3Proxy` holds the request that marks it, the run is killed while it
waits for the answer, and the request is then dropped, as a dead client's would be.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from raymerge import api
from raymerge.storage import MANIFEST
from tests.reliability.conftest import lerobot_config, text_config, wds_config, write_config
from tests.s3proxy import Request, S3Proxy

# Every request that changes what a reader of the output sees (uploads to final keys do not, until completed).
VISIBLE = ("PutObject", "CopyObject", "CompleteMultipartUpload", "DeleteObject", "DeleteObjects")
PER_RUN = (MANIFEST, ".raymerge.json", "index.uuid")  # name the run by design: run id, timings; Energon's uuid4


@pytest.fixture
def proxy(s3_endpoint):
    with S3Proxy(int(s3_endpoint.rsplit(":", 1)[1])) as p:
        yield p


def _configs(family: str, request, bucket: str, endpoint: str) -> tuple[dict, dict, str]:
    """(the old output's config, the replacing run's config, the output's key) for `family`."""
    options = {"endpoint_url": endpoint}
    if family == "webdataset":
        inp = request.getfixturevalue("wds_input")
        out = "out/wds"
        old = wds_config(inp, f"s3://{bucket}/{out}", storage_options=options)
        new = wds_config(inp, f"s3://{bucket}/{out}", storage_options=options, maxcount=7)
    elif family == "text":
        inp = request.getfixturevalue("text_input")
        out = "out/merged.jsonl"
        old = text_config(inp, f"s3://{bucket}/{out}", storage_options=options)
        old["interleave"] = {**old["interleave"], "seed": 8}
        new = text_config(inp, f"s3://{bucket}/{out}", storage_options=options)
    else:
        inp = request.getfixturevalue("lerobot_input")
        out = "out/robot"
        old = lerobot_config(inp, f"s3://{bucket}/{out}")
        old["inputs"] = old["inputs"][:1]
        new = lerobot_config(inp, f"s3://{bucket}/{out}")
        for cfg in (old, new):
            cfg["output"]["storage_options"] = options
    return old, new, out


def _tree(fs, bucket: str, out: str) -> dict[str, str]:
    """sha256 of every object of the output (a single file: the file and its report beside it)."""
    fs.invalidate_cache()
    found = fs.find(f"{bucket}/{out}") + fs.glob(f"{bucket}/{out}.raymerge.json")
    return {p: hashlib.sha256(fs.cat_file(p)).hexdigest() for p in sorted(set(found))}


def _content(tree: dict[str, str]) -> dict[str, str]:
    return {p: h for p, h in tree.items() if not p.endswith(PER_RUN)}


def _leftovers(fs, bucket: str) -> tuple[list[str], list[str]]:
    fs.invalidate_cache()
    uploads = [u["Key"] for u in fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])]
    return uploads, [p for p in fs.find(f"{bucket}/out") if ".raymerge-" in p]


def _start_run(config: Path) -> subprocess.Popen:
    """`raymerge run --overwrite` on its own Ray, in a process group of its own: the whole run, killable at once."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    exe = Path(sys.executable).with_name("raymerge")
    return subprocess.Popen(
        [str(exe), "run", str(config), "--overwrite", "--executor", "ray", "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _kill_run(proc: subprocess.Popen) -> None:
    """SIGKILL the run's process group, then anything of it that left the group; wait for all of them."""
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)  # reaps the command itself, keeping its exit status
    for p in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
            p.wait(timeout=60)


def _nth(n: int, match: Callable[[Request], bool]) -> Callable[[Request], bool]:
    seen = itertools.count(1)
    return lambda r: match(r) and next(seen) == n


@pytest.mark.parametrize(
    ("family", "moment"),
    [
        ("webdataset", "first upload"),
        ("webdataset", "half-way"),
        ("webdataset", "commit"),
        ("webdataset", "mid-commit"),
        ("text", "first upload"),
        ("text", "commit"),
        ("lerobot", "half-way"),
        ("lerobot", "commit"),
    ],
)
def test_killed_overwrite_keeps_the_old_output_and_the_rerun_cleans_up(request, s3, proxy, tmp_path, family, moment):
    fs, bucket = s3["fs"], s3["bucket"]
    old_cfg, new_cfg, out = _configs(family, request, bucket, proxy.endpoint)
    api.run(old_cfg, executor="in-process")
    old = _tree(fs, bucket, out)
    assert any(p.endswith((MANIFEST, ".raymerge.json")) for p in old), "the old output has its manifest"

    # How many uploads the replacing run makes, from an undisturbed run of it elsewhere.
    reference = {**new_cfg, "output": {**new_cfg["output"], "path": f"s3://{bucket}/ref/{Path(out).name}"}}
    proxy.reset()
    api.run(reference, executor="in-process")
    ref_key = reference["output"]["path"].removeprefix(f"s3://{bucket}/")
    parts = [r for r in proxy.recorded(bucket) if r.op == "UploadPart" and r.under(ref_key)]
    expected = _content(_tree(fs, bucket, ref_key))

    def in_output(r: Request) -> bool:
        """About the output: its keys, or the report beside a single-file output (also in a DeleteObjects)."""
        keys = [r.key, *r.deleted]
        return any(k == out or k.startswith(f"{out}/") or k == f"{out}.raymerge.json" for k in keys)

    if moment == "first upload":
        proxy.hold(lambda r: r.op == "UploadPart" and in_output(r))
    elif moment == "half-way":
        proxy.hold(_nth(max(2, len(parts) // 2), lambda r: r.op == "UploadPart" and in_output(r)))
    elif moment == "mid-commit":
        proxy.hold(_nth(2, lambda r: r.op == "CompleteMultipartUpload" and in_output(r)))
    else:
        proxy.hold(lambda r: r.op in VISIBLE and in_output(r))

    proxy.reset()
    run = _start_run(write_config(tmp_path / "run.yaml", new_cfg))
    try:
        held = proxy.wait_held(alive=lambda: run.poll() is None)
        print(f"{family}, {moment}: killed at {held.op} {held.key}")
    finally:
        _kill_run(run)
        proxy.drop()
    assert run.returncode == -signal.SIGKILL
    if moment == "mid-commit":
        # Inside the commit window: some keys replaced, no manifest, so the prefix does not look complete.
        left = _tree(fs, bucket, out)
        assert f"{bucket}/{out}/{MANIFEST}" not in left and left != old
    else:
        assert _tree(fs, bucket, out) == old, "the old output, byte for byte, with its own manifest"
    if moment not in ("commit", "mid-commit"):
        uploads, _ = _leftovers(fs, bucket)
        assert uploads, "the killed run had uploads pending: what the next run must abort"

    api.run(new_cfg, overwrite=True, executor="in-process")
    assert _leftovers(fs, bucket) == ([], [])
    replaced = _tree(fs, bucket, out)
    assert {p.replace(f"/{out}", "/ref/" + Path(out).name, 1): h for p, h in _content(replaced).items()} == expected
    assert any(p.endswith((MANIFEST, ".raymerge.json")) for p in replaced)
