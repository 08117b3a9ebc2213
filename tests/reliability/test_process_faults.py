"""Killed workers, a killed driver, Ctrl-C and two runs at once, on real processes attached to the suite's Ray.

Each fault hits a CLI run at a moment it waits for (a worker executing a write task, the first
file in staging); the run is then checked against an undisturbed run of the same config.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import ray

from raymerge import api
from raymerge.errors import InvalidInput
from raymerge.storage import MANIFEST
from tests.helpers import tree_digest
from tests.reliability.conftest import lerobot_config, output_digest, text_config, wds_config, write_config
from tests.reliability.procs import finish, kill_workers_running, staged, start_cli, wait_for

# family -> (config builder, input fixture, output name, a task of its write stage)
FAMILIES = {
    "webdataset": (wds_config, "wds_input", "out", "write_output_shards"),
    "text": (text_config, "text_input", "merged.jsonl", "write_block"),
}
# LeRobot's write stage (data and video tasks) is too short to reliably interrupt the driver within it.
WRITERS = {**FAMILIES, "lerobot": (lerobot_config, "lerobot_input", "out", "write_")}


def _case(request, family: str, tmp_path: Path):
    build, fixture, name, task = WRITERS[family]
    inp = request.getfixturevalue(fixture)
    return build, inp, name, task


def _reference(build, inp: Path, tmp_path: Path, name: str) -> dict[str, str]:
    ref = tmp_path / "reference" / name
    api.run(build(inp, ref))
    return output_digest(ref)


def _staging_hasoutput_digest(parent: Path, name: str) -> bool:
    return any(any(p.is_file() for p in s.rglob("*")) for s in staged(parent, name))


@pytest.mark.parametrize("family", WRITERS)
def test_worker_killed_mid_write_gives_identical_output(ray_address, request, family, tmp_path):
    build, inp, name, task = _case(request, family, tmp_path)
    expected = _reference(build, inp, tmp_path, name)
    before = tree_digest(inp)
    out = tmp_path / "faulted" / name
    cfg = write_config(tmp_path / "run.yaml", build(inp, out))
    proc = start_cli("run", str(cfg), "--address", ray_address, "--quiet")
    killed = kill_workers_running(task, proc)
    code, _, stderr = finish(proc)
    assert code == 0, stderr
    assert killed and output_digest(out) == expected
    assert tree_digest(inp) == before
    # The suite's own session is unharmed: it still runs tasks.
    assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42


def test_driver_killed_mid_run_commits_nothing_and_the_rerun_cleans_up(ray_address, wds_input, wds_reference, tmp_path):
    out = tmp_path / "out"
    before = tree_digest(wds_input)
    cfg = write_config(tmp_path / "run.yaml", wds_config(wds_input, out))
    proc = start_cli("run", str(cfg), "--address", ray_address, "--quiet")
    wait_for(lambda: _staging_hasoutput_digest(tmp_path, "out"), proc)
    proc.send_signal(signal.SIGKILL)
    finish(proc)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and not list(tmp_path.rglob(MANIFEST))
    assert staged(tmp_path, "out"), "the killed run's staging is what the next run must clean"
    assert tree_digest(wds_input) == before

    report = api.run(cfg)
    assert report.rows_out == 8 * 40
    assert staged(tmp_path, "out") == []
    assert output_digest(out) == wds_reference and (out / MANIFEST).is_file()
    assert tree_digest(wds_input) == before


@pytest.mark.parametrize("family", FAMILIES)
def test_ctrl_c_mid_run_exits_130_and_removes_staging(ray_address, request, family, tmp_path):
    build, inp, name, _ = _case(request, family, tmp_path)
    before = tree_digest(inp)
    out = tmp_path / name
    cfg = write_config(tmp_path / "run.yaml", build(inp, out))
    proc = start_cli("run", str(cfg), "--address", ray_address, "--quiet")
    wait_for(lambda: _staging_hasoutput_digest(tmp_path, name), proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    code, _, stderr = finish(proc)
    print(f"{family}: exited {time.monotonic() - sent:.2f}s after SIGINT")  # a figure for docs/reliability.md
    assert code == 130
    assert "raymerge: cancelled; staging removed, nothing committed" in stderr
    assert "Traceback" not in stderr
    assert not out.exists() and staged(tmp_path, name) == []
    assert tree_digest(inp) == before


def test_second_run_to_the_same_output_is_refused_while_the_first_completes(
    ray_address, wds_input, wds_reference, tmp_path
):
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "run.yaml", wds_config(wds_input, out))
    first = start_cli("run", str(cfg), "--address", ray_address, "--quiet")
    wait_for(lambda: bool(staged(tmp_path, "out")), first)
    first.send_signal(signal.SIGSTOP)  # hold the first run inside its write stage, lock taken
    try:
        other = wds_config(wds_input / "shard-00000.tar", out)
        with pytest.raises(
            InvalidInput, match=r"out is being written by another raymerge run \(lock .*\.out\.raymerge\.lock\)"
        ):
            api.run(other)
    finally:
        first.send_signal(signal.SIGCONT)
    code, _, stderr = finish(first)
    assert code == 0, stderr
    assert output_digest(out) == wds_reference
    assert len(staged(tmp_path, "out")) == 0
