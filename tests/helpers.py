"""Helpers tests import: ports, processes, hashing trees, running the CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


def tree_digest(root: Path) -> dict[str, str]:
    """Every file below root with its sha256: to prove inputs are byte-identical after a run."""
    import hashlib

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    """Run the `raymerge` command as a user would, in a subprocess."""
    exe = Path(sys.executable).with_name("raymerge")
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(exe), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def assert_rejected(cfg: dict, message: str, inputs: list[Path], output: Path, **run_options) -> None:
    """`api.run(cfg)` is refused with `message`, writes nothing (no output, no staging or scratch left beside it;
    a local lock file may remain) and leaves every input byte-identical."""
    import pytest

    from raymerge import api
    from raymerge.errors import InvalidInput

    before = [tree_digest(p) if p.is_dir() else tree_digest(p.parent) for p in inputs]
    with pytest.raises(InvalidInput, match=message):
        api.run(cfg, **run_options)
    assert not output.exists()
    leftovers = [p.name for p in output.parent.glob(f".{output.name}.raymerge*") if not p.name.endswith(".lock")]
    assert leftovers == []
    assert [tree_digest(p) if p.is_dir() else tree_digest(p.parent) for p in inputs] == before
