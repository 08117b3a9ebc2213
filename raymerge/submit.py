"""`raymerge submit`: run a config as a Ray job on a cluster, exactly as `raymerge run` runs it locally.

The config is validated on the client first, so a bad config costs no cluster time and submits
nothing. The job carries what it needs and nothing else: the config file (as the job's working
directory), this raymerge package (`py_modules`, so the cluster runs the client's version) and the
environment the config refers to with `${VAR}` plus the storage credentials (`env_vars`). Values of
that environment and the cluster token are sent, never printed.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import raymerge
from raymerge.config import _ENV_PATTERN, read_yaml
from raymerge.errors import RunFailed
from raymerge.families import load_config
from raymerge.runtime import forwarded_env
from raymerge.storage import new_run_id

PACKAGE_DIR = Path(raymerge.__file__).resolve().parent
PACKAGE_EXCLUDES = ["__pycache__", "*.pyc"]
TOKEN_PATH = Path.home() / ".ray" / "auth_token"

# How a failed job's driver exit code maps to ours: the run's own codes pass through.
_KNOWN_EXIT_CODES = {1, 2, 130}


@dataclass(frozen=True)
class JobSpec:
    """Everything a submission sends; `runtime_env` holds secret values, so it is never shown."""

    submission_id: str
    entrypoint: str
    config_name: str
    runtime_env: dict[str, Any]

    def describe(self) -> str:
        env_names = ", ".join(sorted(self.runtime_env.get("env_vars", {}))) or "none"
        return f"job {self.submission_id}: {self.entrypoint} (environment forwarded: {env_names})"


def referenced_env(value: Any) -> set[str]:
    """Names of every `${VAR}` in a raw config, so the job gets them and only them."""
    if isinstance(value, str):
        return {m.group(1) for m in _ENV_PATTERN.finditer(value)}
    if isinstance(value, dict):
        return set().union(*(referenced_env(v) for v in value.values()), *(referenced_env(k) for k in value))
    if isinstance(value, list):
        return set().union(*(referenced_env(v) for v in value))
    return set()


def job_env(raw: Mapping[str, Any], overrides: Iterable[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The variables the config names plus the storage environment workers need, as set on the client."""
    names = referenced_env(dict(raw)) | referenced_env(list(overrides))
    env = {name: environ[name] for name in sorted(names) if name in environ}
    env.update(forwarded_env(dict(environ)))
    return env


def entrypoint(config_name: str, overrides: Iterable[str], overwrite: bool) -> str:
    """`python -m raymerge.cli run`: works from the uploaded package whether or not the image installs raymerge."""
    args = ["python", "-m", "raymerge.cli", "run", config_name]
    for assignment in overrides:
        args += ["--set", assignment]
    if overwrite:
        args.append("--overwrite")
    return shlex.join(args)


def build_job(
    config_path: str | Path,
    *,
    overrides: Iterable[str] = (),
    overwrite: bool = False,
    environ: Mapping[str, str] | None = None,
    working_dir: str = "",
) -> JobSpec:
    """Validate the config as `run` would (raises InvalidInput) and describe the job that runs it."""
    env = dict(os.environ if environ is None else environ)
    overrides = list(overrides)
    cfg = load_config(config_path, overrides, env)
    raw = read_yaml(config_path)
    name = Path(config_path).name
    runtime_env: dict[str, Any] = {
        "py_modules": [str(PACKAGE_DIR)],
        "excludes": PACKAGE_EXCLUDES,
        "env_vars": job_env(raw, overrides, env),
    }
    if working_dir:
        runtime_env["working_dir"] = working_dir
    return JobSpec(
        submission_id=f"raymerge-{cfg.kind}-{cfg.operation}-{new_run_id()}",
        entrypoint=entrypoint(name, overrides, overwrite),
        config_name=name,
        runtime_env=runtime_env,
    )


def auth_token(environ: Mapping[str, str], default_path: Path = TOKEN_PATH) -> str | None:
    """The cluster token the way Ray's own clients find it: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token.

    The default file is only used when RAY_AUTH_MODE=token, so a local token is not sent to a
    cluster that never asked for one.
    """
    if environ.get("RAY_AUTH_TOKEN"):
        return environ["RAY_AUTH_TOKEN"].strip()
    path = environ.get("RAY_AUTH_TOKEN_PATH")
    if not path and environ.get("RAY_AUTH_MODE", "").lower() == "token":
        path = str(default_path)
    if not path:
        return None
    try:
        return Path(path).expanduser().read_text().strip() or None
    except OSError as e:
        raise RunFailed(f"cannot read the Ray auth token file {path}: {e.strerror}") from None


def auth_headers(environ: Mapping[str, str]) -> dict[str, str]:
    token = auth_token(environ)
    return {"Authorization": f"Bearer {token}"} if token else {}


def exit_code(status: str, driver_exit_code: int | None) -> int:
    """The job's outcome as our exit codes: 0 ok, 2 rejected input, 1 failure, 130 stopped."""
    if status == "SUCCEEDED":
        return 0
    if status == "STOPPED":
        return 130
    return driver_exit_code if driver_exit_code in _KNOWN_EXIT_CODES else 1


def submit_config(
    config_path: str | Path,
    address: str,
    *,
    overrides: Iterable[str] = (),
    overwrite: bool = False,
    wait: bool = True,
    out: TextIO,
    err: TextIO,
) -> int:
    """Submit the config as a Ray job; with `wait`, stream its logs and return its exit code."""
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="raymerge-job-") as job_dir:
        spec = build_job(config_path, overrides=overrides, overwrite=overwrite, environ=env, working_dir=job_dir)
        shutil.copyfile(config_path, Path(job_dir) / spec.config_name)
        client = _client(address, env)
        job_id = _call(
            address,
            lambda: client.submit_job(
                entrypoint=spec.entrypoint, submission_id=spec.submission_id, runtime_env=spec.runtime_env
            ),
        )
    print(f"raymerge: submitted {spec.describe()}", file=err, flush=True)
    print(f"raymerge: dashboard {address.rstrip('/')}/#/jobs/{job_id}", file=err, flush=True)
    if not wait:
        print(job_id, file=out, flush=True)
        return 0
    try:
        asyncio.run(_stream_logs(client, job_id, out))
    except KeyboardInterrupt:
        client.stop_job(job_id)
        print(f"raymerge: cancelled; stopped job {job_id}", file=err, flush=True)
        return 130
    info = _call(address, lambda: client.get_job_info(job_id))
    status = str(info.status)
    code = exit_code(status, info.driver_exit_code)
    if code:
        detail = f": {info.message}" if info.message and status != "STOPPED" else ""
        print(f"raymerge: job {job_id} {status.lower()} (exit code {code}){detail}", file=err, flush=True)
    return code


def _client(address: str, environ: Mapping[str, str]):
    from ray.job_submission import JobSubmissionClient

    return _call(address, lambda: JobSubmissionClient(address, headers=auth_headers(environ)))


def _call(address: str, fn):
    """One clear message for the ways talking to a job server fails (unreachable, token refused)."""
    from ray.exceptions import AuthenticationError

    try:
        return fn()
    except AuthenticationError:
        raise RunFailed(
            f"the Ray cluster at {address} refused the request: it uses token authentication "
            "(RAY_AUTH_MODE=token); set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH to the cluster's token"
        ) from None
    except ConnectionError as e:
        raise RunFailed(f"cannot reach the Ray job server at {address}: {e}") from None


async def _stream_logs(client, job_id: str, out: TextIO) -> None:
    async for chunk in client.tail_job_logs(job_id):
        out.write(chunk)
        out.flush()
