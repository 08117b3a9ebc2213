"""`raymerge submit`: validate a config on the client and send it to a cluster as a Ray job.

The config is validated on the client first, so a bad config costs no cluster time and submits
nothing. The job carries the config file as written (what environment goes with it: `jobenv`), this
raymerge package (`py_modules`, so the cluster runs the client's version) and a launcher that checks
the cluster's Python before importing anything. Following the job once it is submitted is `jobs`.
"""

from __future__ import annotations

import json
import shlex
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import raymerge
from raymerge.config import BaseConfig, read_yaml
from raymerge.errors import InvalidInput
from raymerge.families import load_config
from raymerge.job_driver import LAUNCHER_NAME, SPEC_NAME
from raymerge.jobenv import (
    check_environ,
    check_overrides,
    dependency_env,
    env_notes,
    env_refs,
    literal_secret_notes,
    merge_runtime_env,
    override_refs,
    read_runtime_env,
    requirement_modules,
    requirements,
    sent_env,
)
from raymerge.jobs import call, connect, follow
from raymerge.storage import new_run_id

PACKAGE_DIR = Path(raymerge.__file__).resolve().parent
PACKAGE_EXCLUDES = ["__pycache__", "*.pyc"]


@dataclass(frozen=True)
class JobSpec:
    """Everything a submission sends; `notes` are printed on the client before submitting."""

    submission_id: str
    entrypoint: str
    config_name: str
    runtime_env: dict[str, Any]
    launcher_spec: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        env_names = ", ".join(sorted(self.runtime_env.get("env_vars", {}))) or "none"
        return f"job {self.submission_id}: {self.entrypoint} (environment sent: {env_names})"

    def write(self, config_path: str | Path, job_dir: Path) -> None:
        """The job's working directory: the config as written, the launcher and what it checks."""
        shutil.copyfile(config_path, job_dir / self.config_name)
        shutil.copyfile(PACKAGE_DIR / "job_driver.py", job_dir / LAUNCHER_NAME)
        (job_dir / SPEC_NAME).write_text(json.dumps(self.launcher_spec, indent=2))


# -- where the run's data is ----------------------------------------------------------------------


def is_local_path(path: str) -> bool:
    return "://" not in path or path.startswith(("file://", "local://"))


def check_locations(cfg: BaseConfig) -> None:
    """Refuse paths on this machine's disk: on a cluster they would name another machine's disk.

    A path every node mounts at the same place (NFS, EFS, Lustre) is marked `shared: true` and must be absolute.
    """
    problems = []
    places = [(f"inputs[{i}]", loc) for i, loc in enumerate(cfg.inputs)] + [("output", cfg.output)]
    for where, loc in places:
        if not is_local_path(loc.path) or "<" in loc.path:  # "<NAME>": only the cluster knows the path
            continue
        path = loc.path.split("://", 1)[-1]
        if not loc.shared:
            problems.append(
                f"  {where}.path: {loc.path} is on this machine's disk, which the cluster's nodes do not see; "
                f"use object storage (s3://...), or set {where}.shared: true if every node mounts it at this path"
            )
        elif not Path(path).is_absolute():
            problems.append(f"  {where}.path: {loc.path}: a shared path must be absolute (the job runs elsewhere)")
    if problems:
        raise InvalidInput("a job on a cluster cannot use these paths:\n" + "\n".join(problems))


# -- the job ---------------------------------------------------------------------------------------


def entrypoint(config_name: str, overrides: Iterable[str], overwrite: bool) -> str:
    """The launcher, then `raymerge run`: works from the uploaded package whether or not the image installs it.

    `--address auto` attaches the run to the cluster the job runs on, whatever the config's `ray.address` says.
    """
    args = ["python", LAUNCHER_NAME, "run", config_name, "--address", "auto"]
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
    env_names: Iterable[str] = (),
    runtime_env_file: str | Path | None = None,
    with_deps: bool = False,
    environ: Mapping[str, str] | None = None,
    working_dir: str = "",
) -> JobSpec:
    """Validate the config as `run` would (raises InvalidInput) and describe the job that runs it.

    The config is checked with this machine's values for its `${VAR}`s (placeholders where only the
    cluster sets one); the job gets it unresolved and resolves it on the cluster.
    """
    import os

    env = dict(os.environ if environ is None else environ)
    overrides = list(overrides)
    check_overrides(overrides)
    raw = read_yaml(config_path)
    refs = env_refs(raw) + override_refs(overrides)
    cfg = load_config(config_path, overrides, check_environ(refs, env))
    check_locations(cfg)
    sent = sent_env(env_names, env)
    runtime_env: dict[str, Any] = {"py_modules": [str(PACKAGE_DIR)], "excludes": PACKAGE_EXCLUDES}
    if sent:
        runtime_env["env_vars"] = sent
    reqs = requirements()
    if with_deps:
        runtime_env.update(dependency_env(reqs))
    notes = env_notes(refs, sent, env) + literal_secret_notes(raw)
    if runtime_env_file:
        runtime_env, file_notes = merge_runtime_env(
            runtime_env, read_runtime_env(runtime_env_file), f"--runtime-env {runtime_env_file}"
        )
        notes += file_notes
    if working_dir:
        runtime_env["working_dir"] = working_dir
    name = Path(config_path).name
    return JobSpec(
        submission_id=f"raymerge-{cfg.kind}-{cfg.operation}-{new_run_id()}",
        entrypoint=entrypoint(name, overrides, overwrite),
        config_name=name,
        runtime_env=runtime_env,
        launcher_spec={
            "requires": requirement_modules(reqs),
            "env_refs": [ref.to_json() for ref in refs if ref.name not in sent],
        },
        notes=notes,
    )


def submit_config(
    config_path: str | Path,
    address: str | None,
    *,
    overrides: Iterable[str] = (),
    overwrite: bool = False,
    env_names: Iterable[str] = (),
    runtime_env_file: str | Path | None = None,
    with_deps: bool = False,
    wait: bool = True,
    reconnect_timeout: float = 600.0,
    out: TextIO,
    err: TextIO,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Submit the config as a Ray job; with `wait`, stream its logs and return its exit code."""
    import os

    env = dict(os.environ if environ is None else environ)
    with tempfile.TemporaryDirectory(prefix="raymerge-job-") as job_dir:
        spec = build_job(
            config_path,
            overrides=overrides,
            overwrite=overwrite,
            env_names=env_names,
            runtime_env_file=runtime_env_file,
            with_deps=with_deps,
            environ=env,
            working_dir=job_dir,
        )
        for note in spec.notes:
            print(f"raymerge: note: {note}", file=err, flush=True)
        spec.write(config_path, Path(job_dir))
        client, address = connect(address, env, err)
        job_id = call(
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
    return follow(client, job_id, address, out, err, reconnect_timeout=reconnect_timeout, stop_on_interrupt=True)
