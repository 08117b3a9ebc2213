"""Real processes for fault tests: start the CLI, wait for a moment in its run, find and kill Ray workers.

Waits are bounded (they raise when the moment never comes) and nothing here measures speed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

WAIT_S = 120.0


def start_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`raymerge ARGS` in the background, as a user would start it."""
    exe = Path(sys.executable).with_name("raymerge")
    return subprocess.Popen(
        [str(exe), *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen | None = None, timeout: float = WAIT_S) -> None:
    """Poll until `condition()`; fail if `proc` exits first or the bound passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process exited with {proc.returncode} before the awaited moment:\n{out}\n{err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the awaited moment did not come within {timeout}s")
        time.sleep(0.002)


def finish(proc: subprocess.Popen, timeout: float = WAIT_S) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def staged(parent: Path, name: str) -> list[Path]:
    """Staging folders a run to `parent/name` has (or left) next to the target."""
    return sorted(parent.glob(f".{name}.raymerge-staging-*"))


def _title(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def kill_workers_running(task: str, proc: subprocess.Popen, kills: int = 1, timeout: float = WAIT_S) -> list[int]:
    """SIGKILL `kills` Ray worker processes of this test session while they execute `task` (`ray::<task>`).

    Workers are descendants of the session's raylet, itself a child of this process, so other Ray
    clusters on the machine are never touched. A pid is killed once, the moment its title names the task.
    """
    mark = f"ray::{task}".encode()
    me = psutil.Process()
    killed: list[int] = []
    candidates: list[int] = []
    refreshed = 0.0
    deadline = time.monotonic() + timeout
    while len(killed) < kills:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"killed {len(killed)} of {kills} worker(s) running {task} before the run ended")
        now = time.monotonic()
        if now - refreshed > 0.05:
            candidates = [p.pid for p in me.children(recursive=True) if p.pid not in killed]
            refreshed = now
        for pid in candidates:
            if pid not in killed and _title(pid).startswith(mark):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
    return killed
