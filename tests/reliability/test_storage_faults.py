"""Object storage that drops, delays or refuses connections; a disk that fills up; replacing an output.

S3 faults go through `FaultProxy`, a TCP proxy on loopback in front of the suite's S3 server, so
s3fs and botocore meet real refused and reset connections.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from raymerge import api
from raymerge.cli import main
from raymerge.storage import MANIFEST
from raymerge.webdataset import samples as wds_samples
from tests.faultproxy import FaultProxy
from tests.helpers import run_cli, tree_digest
from tests.reliability.conftest import text_config, wds_config, write_config
from tests.reliability.procs import finish, staged, start_cli, wait_for


@pytest.fixture(scope="module")
def small_wds(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small-wds") / "images"
    wds_samples.write_shards(root, wds_samples.image_samples(wds_samples.keys(24), 2_000), 3)
    return root


def _s3_case(family: str, s3, small_wds: Path, text_input: Path, endpoint: str) -> tuple[dict, str]:
    """A config reading and writing s3://bucket through `endpoint`, and the output's key prefix."""
    fs, bucket = s3["fs"], s3["bucket"]
    options = {"endpoint_url": endpoint}
    if family == "webdataset":
        if not fs.exists(f"{bucket}/in"):
            fs.put(str(small_wds), f"{bucket}/in", recursive=True)
        cfg = wds_config(
            f"s3://{bucket}/in", f"s3://{bucket}/out-{endpoint.rsplit(':', 1)[1]}", storage_options=options
        )
    else:
        if not fs.exists(f"{bucket}/in"):
            fs.put([str(text_input / "a.jsonl"), str(text_input / "b.jsonl")], f"{bucket}/in/")
        cfg = text_config(Path("."), f"s3://{bucket}/out-{endpoint.rsplit(':', 1)[1]}.jsonl", storage_options=options)
        cfg["inputs"] = [{"path": f"s3://{bucket}/in/{n}"} for n in ("a.jsonl", "b.jsonl")]
    for inp in cfg["inputs"]:
        inp["storage_options"] = options
    return cfg, cfg["output"]["path"].removeprefix("s3://")


def _read_tree(fs, prefix: str) -> dict[str, bytes]:
    if fs.isfile(prefix):
        return {"": fs.cat(prefix)}
    skip = (MANIFEST, "index.uuid")  # per-run by design: run id and timings; Energon's uuid4
    return {p[len(prefix) :]: fs.cat(p) for p in sorted(fs.find(prefix)) if not p.endswith(skip)}


@pytest.mark.parametrize("family", ["webdataset", "text"])
def test_dropped_and_delayed_s3_connections_are_retried(ray_address, s3, small_wds, text_input, family):
    fs = s3["fs"]
    direct, direct_out = _s3_case(family, s3, small_wds, text_input, s3["endpoint_url"])
    api.run(direct)
    upstream = int(s3["endpoint_url"].rsplit(":", 1)[1])
    with FaultProxy(upstream, drop_every=3, delay_s=0.02) as proxy:
        faulted, faulted_out = _s3_case(family, s3, small_wds, text_input, proxy.endpoint)
        report = api.run(faulted)
    print(f"{family}: {proxy.dropped} of {proxy.accepted} connections dropped")  # figure for the docs
    assert proxy.dropped > 0
    assert report.rows_out > 0
    fs.invalidate_cache()
    assert _read_tree(fs, faulted_out) == _read_tree(fs, direct_out)


def test_s3_endpoint_that_stays_down_is_one_clear_error(ray_address, s3, small_wds, text_input, tmp_path):
    upstream = int(s3["endpoint_url"].rsplit(":", 1)[1])
    with FaultProxy(upstream) as proxy:
        cfg, out = _s3_case("webdataset", s3, small_wds, text_input, proxy.endpoint)
        proxy.down = True
        # Give up sooner than botocore's default 5 attempts: the error, not the patience, is tested.
        fewer = {"config_kwargs": {"retries": {"max_attempts": 1}}}
        for loc in (*cfg["inputs"], cfg["output"]):
            loc["storage_options"].update(fewer)
        result = run_cli("run", str(write_config(tmp_path / "run.yaml", cfg)), "--address", ray_address, "--quiet")
    assert result.returncode in (1, 2), result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("raymerge: ")]
    assert len(lines) == 1 and lines[0].startswith("raymerge: error: "), result.stderr
    print(lines[0])  # the message, for the docs
    assert proxy.endpoint in lines[0]
    assert "Traceback" not in result.stderr
    s3["fs"].invalidate_cache()
    assert not s3["fs"].exists(out) and not s3["fs"].exists(f"{out}/{MANIFEST}")


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 3 MiB tmpfs: the output's parent folder runs out of space mid-write."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.parametrize("family", ["webdataset", "text"])
def test_disk_full_fails_cleanly(ray_address, request, small_disk, family, tmp_path):
    inp = request.getfixturevalue("wds_input" if family == "webdataset" else "text_input")
    before = tree_digest(inp)
    name = "out" if family == "webdataset" else "merged.jsonl"
    build = wds_config if family == "webdataset" else text_config
    cfg = write_config(tmp_path / "run.yaml", build(inp, small_disk / name))
    result = run_cli("run", str(cfg), "--address", ray_address, "--quiet")
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("raymerge: ")]
    assert len(lines) == 1 and lines[0].startswith("raymerge: error: "), result.stderr
    assert "no space left" in lines[0].lower()
    assert "Traceback" not in result.stderr
    assert list(small_disk.iterdir()) == [], "nothing committed, staging removed"
    assert tree_digest(inp) == before


def test_rerun_needs_overwrite_and_replaces_the_output_only_at_commit(ray_address, wds_input, tmp_path):
    out = tmp_path / "out"
    api.run(wds_config(wds_input, out))
    old = tree_digest(out)
    cfg = write_config(tmp_path / "run.yaml", wds_config(wds_input, out, maxcount=7))

    refused = CliRunner().invoke(main, ["run", str(cfg), "--quiet"])
    assert refused.exit_code == 2
    assert refused.stderr.startswith(
        f"raymerge: error: output {out} already exists; set output.overwrite: true or pass --overwrite"
    )
    assert tree_digest(out) == old

    # A replacing run that dies before its commit leaves the old output as it was.
    killed = start_cli("run", str(cfg), "--overwrite", "--address", ray_address, "--quiet")
    wait_for(lambda: any(any(p.is_file() for p in s.rglob("*")) for s in staged(tmp_path, "out")), killed)
    assert tree_digest(out) == old
    killed.send_signal(signal.SIGKILL)
    finish(killed)
    assert tree_digest(out) == old

    stale = set(staged(tmp_path, "out"))
    replacing = start_cli("run", str(cfg), "--overwrite", "--address", ray_address, "--quiet")
    wait_for(
        lambda: any(any(p.is_file() for p in s.rglob("*")) for s in set(staged(tmp_path, "out")) - stale), replacing
    )
    assert tree_digest(out) == old, "the old output stays complete while the new one is staged"
    code, _, stderr = finish(replacing)
    assert code == 0, stderr
    new = tree_digest(out)
    assert new != old and sum(n.endswith(".tar") for n in new) == 8 * 40 // 7 + 1
    assert staged(tmp_path, "out") == [] and not list(tmp_path.glob(".out.raymerge-old-*"))
    shutil.rmtree(out)
