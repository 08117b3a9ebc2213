"""A real Ray cluster on loopback for tests: `ray start --head` (+ more nodes), separate from the test session's Ray.

Each node is a `ray start --block` process in its own session: stopping it stops exactly the Ray
processes it started (never `ray stop`, which would stop every Ray on the machine). All ports are
free ports and the temp dir is private, so it never meets the test run's own Ray session. Token
authentication is on, with a token of its own, as a production cluster would run it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import free_port, wait_for_port

BIN = Path(sys.executable).parent


def node_ports() -> list[str]:
    """Every port a node opens, chosen free, so two nodes and the test session never collide."""
    return [
        "--node-manager-port", str(free_port()),
        "--object-manager-port", str(free_port()),
        "--dashboard-agent-listen-port", str(free_port()),
        "--dashboard-agent-grpc-port", str(free_port()),
        "--metrics-export-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()),
        "--min-worker-port", "0",
        "--max-worker-port", "0",
    ]  # fmt: skip


@dataclass
class LocalCluster:
    gcs_address: str
    dashboard_url: str
    env: dict[str, str]
    temp_dir: str
    procs: list[subprocess.Popen] = field(default_factory=list)

    def add_node(self, num_cpus: int = 1) -> None:
        args = ["--address", self.gcs_address, "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus)]
        self.procs.append(_start([*args, *node_ports()], self.env, self.temp_dir))

    def node_ids(self) -> list[str]:
        """The alive nodes, from the cluster's own state API."""
        out = subprocess.run(
            [str(BIN / "ray"), "list", "nodes", "--address", self.dashboard_url, "--format", "json",
             "--filter", "state=ALIVE"],
            env=self.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        listed = out.returncode == 0 and out.stdout.lstrip().startswith("[")  # else "No resource in the cluster"
        return sorted(n["node_id"] for n in json.loads(out.stdout)) if listed else []

    def wait_for_nodes(self, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.node_ids()) >= count:
                return
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a Ray node exited with {proc.returncode}: {_log_tail(proc)}")
            time.sleep(1)
        raise TimeoutError(f"{count} Ray nodes did not come up within {timeout}s")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            _stop(proc)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def cluster_env(token: str, identity: Mapping[str, str] | None = None) -> dict[str, str]:
    """The nodes' environment: token auth on, this venv's tools on PATH, no pointer at another cluster.

    None of the test session's storage credentials: the nodes get `identity`, their own, the way a real
    cluster's nodes get theirs (instance profile, IRSA), when they start; a job brings none.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "AWS_"))}
    env.update(identity or {})
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    return env


def s3_identity(endpoint: str) -> dict[str, str]:
    """The cluster's own S3 identity for the loopback S3 server: keys of its own, and the endpoint as a
    real deployment names an S3-compatible store, with AWS_ENDPOINT_URL_S3 (configs need no endpoint_url)."""
    return {
        "AWS_ACCESS_KEY_ID": "cluster-own-key-id",
        "AWS_SECRET_ACCESS_KEY": "cluster-own-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": endpoint,
    }


@contextlib.contextmanager
def local_cluster(num_cpus: int = 1, identity: Mapping[str, str] | None = None) -> Iterator[LocalCluster]:
    token = secrets.token_hex(32)
    env = cluster_env(token, identity)
    temp_dir = tempfile.mkdtemp(prefix="rmc-", dir="/tmp")  # short: Ray's socket paths have a length limit
    port, dash = free_port(), free_port()
    head = _start(
        [
            "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
            "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
            "--ray-client-server-port", str(free_port()), "--num-cpus", str(num_cpus),
            "--temp-dir", temp_dir, *node_ports(),
        ],
        env,
        temp_dir,
    )  # fmt: skip
    cluster = LocalCluster(f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", env, temp_dir, [head])
    try:
        wait_for_port(dash, head, timeout=120)
        cluster.wait_for_nodes(1)
        yield cluster
    finally:
        cluster.stop()


def _start(args: list[str], env: dict[str, str], temp_dir: str) -> subprocess.Popen:
    log = Path(temp_dir) / f"ray-start-{secrets.token_hex(4)}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _LOGS[proc.pid] = log
    return proc


_LOGS: dict[int, Path] = {}


def _log_tail(proc: subprocess.Popen) -> str:
    """The end of what `ray start` printed, for a failure message."""
    try:
        return _LOGS[proc.pid].read_text(errors="replace")[-3000:]
    except (KeyError, OSError):
        return ""


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM lets `ray start --block` stop the processes it started; then clear its session group."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
