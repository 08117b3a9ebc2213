"""Tools for tests that follow a submitted job: a gate that holds it at a known moment, a proxy that cuts the
job server's connections mid-stream, and a reader of a process's output as it comes.

The gate is a `sitecustomize` that the job's `--runtime-env` puts on its PYTHONPATH: the job's driver prints
`gate: waiting` and waits until the test creates the gate file.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.faultproxy import FaultProxy

WAIT_S = 120.0

GATE = """\
import os, sys, time
gate = os.environ.get("RAYMERGE_TEST_GATE")
if gate and any(a.endswith("raymerge_job.py") for a in getattr(sys, "orig_argv", [])):
    print("gate: waiting", flush=True)
    deadline = time.monotonic() + 120
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)
    print("gate: open", flush=True)
"""


@dataclass
class Gate:
    runtime_env: Path
    file: Path

    def open(self) -> None:
        self.file.touch()


def make_gate(tmp_path: Path) -> Gate:
    """A `--runtime-env` file that holds the job's driver until `Gate.open()`."""
    site = tmp_path / "gate-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(GATE)
    runtime_env = tmp_path / "gate.yaml"
    flag = tmp_path / "gate-open"
    runtime_env.write_text(yaml.safe_dump({"env_vars": {"PYTHONPATH": str(site), "RAYMERGE_TEST_GATE": str(flag)}}))
    return Gate(runtime_env, flag)


class CuttingProxy(FaultProxy):
    """A FaultProxy that can also cut every connection it carries, mid-stream."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self._live: set[socket.socket] = set()
        self._lock = threading.Lock()

    def _forward(self, client: socket.socket) -> None:
        with self._lock:
            self._live.add(client)
        try:
            super()._forward(client)
        finally:
            with self._lock:
                self._live.discard(client)

    def cut(self) -> int:
        with self._lock:
            live = list(self._live)
        for conn in live:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        return len(live)


class Lines:
    """A process's output read as it comes, so a test can wait for a line."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line)

    def wait_for(self, text: str, proc: subprocess.Popen, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never came; so far:\n{self.text}")
            time.sleep(0.05)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def join(self) -> None:
        self._thread.join(timeout=30)
