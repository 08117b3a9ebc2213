"""`raymerge submit` and `raymerge job`: run a config as a Ray job on a cluster, and follow it.

The config is validated on the client first, so a bad config costs no cluster time and submits
nothing. The job carries the config file as written, its `${VAR}`s unresolved: they are read on the
cluster, where the run happens. It also carries this raymerge package (`py_modules`, so the cluster
runs the client's version) and a launcher that checks the cluster's Python before importing anything.
No credential goes with it: the cluster uses its own identity (instance profile, IRSA, mounted
Secrets). Only variables named with `--env` travel, and everyone who can list the cluster's jobs can
read them, so names that look like credentials are refused. The exit code is always the job's own:
a dropped log stream is re-attached until the job ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

import raymerge
from raymerge.config import _ENV_PATTERN, _SECRET_KEY, BaseConfig, key_path, read_yaml
from raymerge.errors import InvalidInput, RunFailed
from raymerge.families import load_config
from raymerge.job_driver import LAUNCHER_NAME, SPEC_NAME
from raymerge.runtime import choose_address, environ_without, looks_secret
from raymerge.storage import new_run_id

PACKAGE_DIR = Path(raymerge.__file__).resolve().parent
PACKAGE_EXCLUDES = ["__pycache__", "*.pyc"]
TOKEN_PATH = Path.home() / ".ray" / "auth_token"
# Where `submit` finds the job server: --address, else these, in Ray's own order.
ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")

# How a failed job's driver exit code maps to ours: the run's own codes pass through.
_KNOWN_EXIT_CODES = {1, 2, 130}
EXIT_UNKNOWN = 3  # the job server stayed unreachable: the job's outcome is not known
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Keys of a runtime_env that `submit` builds itself; a --runtime-env file may not set them.
_OWN_KEYS = {"working_dir"}


@dataclass(frozen=True)
class EnvRef:
    """One `${VAR}` in a config: where it is read, and whether it has a default to fall back on."""

    name: str
    where: str
    default: bool

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "where": self.where, "default": self.default, "secret": looks_secret(self.name)}


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


# -- what the config reads from the environment -------------------------------------------------


def env_refs(raw: Any, loc: tuple = ()) -> list[EnvRef]:
    """Every `${VAR}` of a raw config with the key path that reads it."""
    if isinstance(raw, str):
        return [EnvRef(m.group(1), key_path(loc), m.group(2) is not None) for m in _ENV_PATTERN.finditer(raw)]
    if isinstance(raw, dict):
        return [ref for k, v in raw.items() for ref in env_refs(v, (*loc, k))]
    if isinstance(raw, list):
        return [ref for i, v in enumerate(raw) for ref in env_refs(v, (*loc, i))]
    return []


def override_refs(overrides: Iterable[str]) -> list[EnvRef]:
    return [ref for o in overrides for ref in env_refs(o.partition("=")[2], (f"--set {o.partition('=')[0]}",))]


def placeholder(name: str) -> str:
    """What a variable unset on this machine stands for while the config is checked here."""
    return f"<{name}>"


def check_environ(refs: list[EnvRef], environ: Mapping[str, str]) -> dict[str, str]:
    """This machine's environment, plus a placeholder for each variable only the cluster may set."""
    env = dict(environ)
    for ref in refs:
        if not ref.default and ref.name not in env:
            env[ref.name] = placeholder(ref.name)
    return env


def env_notes(refs: list[EnvRef], sent: Iterable[str], environ: Mapping[str, str]) -> list[str]:
    """One line per variable the cluster resolves itself: where it is read and how it gets there."""
    sent = set(sent)
    by_name: dict[str, list[EnvRef]] = {}
    for ref in refs:
        if ref.name not in sent:
            by_name.setdefault(ref.name, []).append(ref)
    notes = []
    for name, found in sorted(by_name.items()):
        where = ", ".join(sorted({r.where for r in found}))
        line = f"the config reads ${{{name}}} ({where}) on the cluster, from the job's environment there"
        if all(r.default for r in found):
            line += ", or its default"
        if looks_secret(name):
            line += "; the cluster must provide it itself (its role, or a Secret mounted as environment)"
        else:
            line += f"; pass --env {name} to send this machine's value"
        if name not in environ and not all(r.default for r in found):
            line += "; it is not set here either, so it was checked with a placeholder"
        notes.append(line)
    return notes


def sent_env(names: Iterable[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The values of `--env NAME`s; a name that looks like a credential is refused, never sent."""
    env: dict[str, str] = {}
    for name in names:
        if not _ENV_NAME.match(name):
            raise InvalidInput(f"--env {name!r}: expected a variable name (its value is taken from this machine)")
        if looks_secret(name):
            raise InvalidInput(
                f"--env {name}: looks like a credential, and a job's environment is readable by everyone who can "
                "list the cluster's jobs; give the cluster its own identity instead (deploy/README.md, "
                "Credentials), or, if the value is not secret, set it in a --runtime-env file"
            )
        if name not in environ:
            raise InvalidInput(f"--env {name}: not set on this machine")
        env[name] = environ[name]
    return env


def literal_secret_notes(raw: Any, loc: tuple = ()) -> list[str]:
    """Config keys that hold a credential as a literal: the config file travels with the job."""
    notes = []
    if isinstance(raw, dict):
        for k, v in raw.items():
            here = (*loc, k)
            if isinstance(v, str) and _SECRET_KEY.search(str(k)) and v and not _ENV_PATTERN.fullmatch(v.strip()):
                notes.append(
                    f"config {key_path(here)} holds a literal credential, and the config file travels to the "
                    "cluster with the job; write ${VAR} and let the cluster provide VAR"
                )
            else:
                notes += literal_secret_notes(v, here)
    elif isinstance(raw, list):
        for i, v in enumerate(raw):
            notes += literal_secret_notes(v, (*loc, i))
    return notes


def check_overrides(overrides: Iterable[str]) -> None:
    """A `--set` of a credential would put it into the job's entrypoint, which the jobs API shows."""
    for assignment in overrides:
        dotted, _, value = assignment.partition("=")
        last = dotted.strip().split(".")[-1]
        if _SECRET_KEY.search(last) and value.strip() and not _ENV_PATTERN.fullmatch(value.strip()):
            raise InvalidInput(
                f"--set {dotted}: would put a credential into the job's entrypoint, which everyone who can list "
                "the cluster's jobs can read; write ${VAR} in the config and let the cluster provide VAR"
            )


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


# -- dependencies and the runtime environment ----------------------------------------------------


def requirements() -> list[str]:
    """raymerge's own pinned runtime requirements, as installed (`ray[data,default]==2.60.0`, ...)."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement

    try:
        lines = requires("raymerge") or []
    except PackageNotFoundError:
        return []
    found = []
    for line in lines:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            found.append(str(req))
    return found


def requirement_name(req: str) -> str:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    return canonicalize_name(Requirement(req).name)


def requirement_modules(reqs: list[str]) -> dict[str, list[str]]:
    """Each requirement with the top-level modules its distribution installs (pyyaml -> yaml)."""
    from importlib.metadata import packages_distributions

    from packaging.utils import canonicalize_name

    modules: dict[str, list[str]] = {}
    for module, dists in packages_distributions().items():
        if module.startswith("_") or not module.isidentifier():
            continue
        for dist in dists:
            modules.setdefault(canonicalize_name(dist), []).append(module)
    return {
        req: sorted(modules.get(requirement_name(req)) or [requirement_name(req).replace("-", "_")]) for req in reqs
    }


def dependency_env(reqs: list[str]) -> dict[str, Any]:
    """A `pip` runtime_env of the pinned requirements, except Ray: the cluster's own Ray must stay."""
    packages = [r for r in reqs if requirement_name(r) != "ray"]
    if not packages:
        raise RunFailed("--with-deps: raymerge's requirements are not readable from its installed metadata")
    return {"pip": {"packages": packages, "pip_check": False}}


def read_runtime_env(path: str | Path) -> dict[str, Any]:
    """A runtime_env from a YAML or JSON file (JSON is YAML)."""
    data: Any = None
    try:
        data = yaml.safe_load(Path(path).read_text())
        problem = "" if isinstance(data, dict) else "expected a mapping (env_vars, pip, py_modules, ...)"
    except (OSError, yaml.YAMLError) as e:
        problem = getattr(e, "strerror", None) or f"not valid YAML or JSON: {e}"
    if problem:
        raise InvalidInput(f"--runtime-env {path}: {problem}")
    return data


def merge_runtime_env(base: dict[str, Any], extra: Mapping[str, Any], source: str) -> tuple[dict[str, Any], list[str]]:
    """`base` (what submit builds) with a user's runtime_env merged in; notes about what it exposes."""
    merged = dict(base)
    notes = []
    for key, value in extra.items():
        if key in _OWN_KEYS:
            raise InvalidInput(f"{source}: {key} is set by raymerge submit (the config's folder); remove it")
        if key in ("pip", "uv", "conda") and any(k in merged for k in ("pip", "uv", "conda")):
            raise InvalidInput(f"{source}: {key} cannot be combined with --with-deps; use one of the two")
        if key == "env_vars":
            if not isinstance(value, dict):
                raise InvalidInput(f"{source}: env_vars must be a mapping of names to values")
            notes += [
                f"{source} sets {name}, which looks like a credential: its value is readable by everyone who "
                "can list the cluster's jobs"
                for name in sorted(value)
                if looks_secret(str(name))
            ]
            merged["env_vars"] = {**merged.get("env_vars", {}), **{str(k): str(v) for k, v in value.items()}}
        elif key in ("py_modules", "excludes") and isinstance(value, list):
            merged[key] = [*merged.get(key, []), *value]
        else:
            merged[key] = value
    return merged, notes


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


# -- talking to the job server --------------------------------------------------------------------


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


def job_server(address: str | None, environ: Mapping[str, str], err: TextIO) -> str:
    """The job server to talk to: --address, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS; a warning on a clash."""
    chosen, warning = choose_address(address, environ, ADDRESS_ENV)
    if warning:
        print(f"raymerge: warning: {warning}", file=err, flush=True)
    if not chosen:
        raise InvalidInput(
            "no cluster named: pass --address http://HEAD:8265 (the job server, i.e. the dashboard) "
            "or set RAY_API_SERVER_ADDRESS"
        )
    return chosen


def connect(address: str | None, environ: Mapping[str, str], err: TextIO) -> tuple[Any, str]:
    """A job-submission client of the chosen cluster, whatever RAY_ADDRESS says (Ray's client would let it win)."""
    from ray.job_submission import JobSubmissionClient

    chosen = job_server(address, environ, err)
    headers = auth_headers(environ)
    with environ_without(*ADDRESS_ENV):
        return _call(chosen, lambda: JobSubmissionClient(chosen, headers=headers)), chosen


def _call(address: str, fn: Callable[[], Any]) -> Any:
    """One clear message for the ways talking to a job server fails (unreachable, token refused, unknown job)."""
    from ray.exceptions import AuthenticationError
    from requests.exceptions import RequestException

    try:
        return fn()
    except AuthenticationError:
        raise RunFailed(
            f"the Ray cluster at {address} refused the request: it uses token authentication "
            "(RAY_AUTH_MODE=token); set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH to the cluster's token"
        ) from None
    except (ConnectionError, RequestException) as e:
        raise RunFailed(f"cannot reach the Ray job server at {address}: {e}") from None
    except RuntimeError as e:
        if "does not exist" in str(e) or "status code 404" in str(e):
            raise InvalidInput(f"the Ray cluster at {address} has no such job: {e}") from None
        raise


def exit_code(status: str, driver_exit_code: int | None) -> int:
    """The job's outcome as our exit codes: 0 ok, 2 rejected input, 1 failure, 130 stopped."""
    if status == "SUCCEEDED":
        return 0
    if status == "STOPPED":
        return 130
    return driver_exit_code if driver_exit_code in _KNOWN_EXIT_CODES else 1


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
    return follow(client, job_id, address, out, err, reconnect_timeout=reconnect_timeout, stop_on_interrupt=True)


# -- following a job -------------------------------------------------------------------------------


class _Cursor:
    """How much of the job's log is on screen, so a re-attached stream does not repeat it."""

    def __init__(self, job_id: str, out: TextIO, err: TextIO) -> None:
        self.job_id, self.out, self.err = job_id, out, err
        self.printed = 0  # characters of the log on screen
        self.seen = 0  # characters the current stream has delivered
        self.any_chunk = False
        self.attached = True

    def write(self, text: str) -> None:
        """Print the part of `text` (the log from offset `seen`) not printed yet."""
        if not self.attached:
            print(f"raymerge: re-attached to job {self.job_id}", file=self.err, flush=True)
            self.attached = True
        new = text[self.printed - self.seen :] if self.seen < self.printed else text
        self.seen += len(text)
        if new:
            self.out.write(new)
            self.out.flush()
            self.printed += len(new)
            self.any_chunk = True

    def restart(self) -> None:
        self.seen = 0

    def lost(self, problem: BaseException | None, stop_on_interrupt: bool) -> None:
        """Say once per outage that the stream dropped and the job runs on."""
        if not self.attached:
            return
        self.attached = False
        why = f" ({_reason(problem)})" if problem is not None else ""
        action = "Ctrl-C stops it" if stop_on_interrupt else "Ctrl-C stops following"
        print(
            f"raymerge: lost the log stream of job {self.job_id}{why}; the job runs on in the cluster; "
            f"re-attaching ({action})",
            file=self.err,
            flush=True,
        )


async def _tail(client: Any, job_id: str, cursor: _Cursor, check_every: float) -> None:
    """Stream the log until it ends or the job is over; a silent, dead connection cannot hang it."""
    cursor.restart()

    async def stream() -> None:
        async for chunk in client.tail_job_logs(job_id):
            cursor.write(chunk)

    task = asyncio.ensure_future(stream())
    while True:
        done, _ = await asyncio.wait({task}, timeout=check_every)
        if done:
            return task.result()
        try:
            status = await asyncio.wait_for(asyncio.to_thread(client.get_job_status, job_id), timeout=check_every)
        except Exception:  # the next status check decides; the stream may still be alive
            continue
        if status.is_terminal():
            done, _ = await asyncio.wait({task}, timeout=check_every)  # let the stream deliver its end
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            return None


def _job_info(client: Any, job_id: str) -> Any | None:
    """The job's details, or None while the job server cannot be reached."""
    from ray.exceptions import AuthenticationError

    try:
        return client.get_job_info(job_id)
    except AuthenticationError:
        raise
    except Exception:
        return None


def _print_rest(client: Any, job_id: str, cursor: _Cursor) -> None:
    """The end of the log the stream did not deliver (it dropped, or the job ended meanwhile)."""
    with contextlib.suppress(Exception):
        logs = client.get_job_logs(job_id)
        cursor.restart()
        cursor.attached = True
        cursor.write(logs)


def follow(
    client: Any,
    job_id: str,
    address: str,
    out: TextIO,
    err: TextIO,
    *,
    reconnect_timeout: float = 600.0,
    stop_on_interrupt: bool = False,
    check_every: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Stream the job's log until it ends and return its exit code; re-attach whenever the stream drops.

    Ctrl-C stops the job when `stop_on_interrupt` (submit), else only stops following (job logs).
    """
    cursor = _Cursor(job_id, out, err)
    lost_since: float | None = None
    delay = 1.0
    try:
        while True:
            problem = None
            try:
                asyncio.run(_tail(client, job_id, cursor, check_every))
            except Exception as e:
                problem = e
            info = _job_info(client, job_id)
            if info is not None and info.status.is_terminal():
                _print_rest(client, job_id, cursor)
                return _report_end(job_id, info, cursor, err)
            if info is not None and problem is None:
                lost_since, delay = None, 1.0
                sleep(1.0)  # the stream ended cleanly while the job runs on: attach again
                continue
            cursor.lost(problem, stop_on_interrupt)
            now = time.monotonic()
            lost_since = (lost_since or now) if info is None else None  # only an unreachable server times out
            if lost_since is not None and now - lost_since > reconnect_timeout:
                print(
                    f"raymerge: cannot reach the job server at {address} for {reconnect_timeout:.0f}s; job {job_id} "
                    f"may still be running: `raymerge job status {job_id} --address {address}`, or re-attach with "
                    f"`raymerge job logs {job_id} --follow --address {address}`",
                    file=err,
                    flush=True,
                )
                return EXIT_UNKNOWN
            sleep(delay)
            delay = min(delay * 2, 15.0)
    except KeyboardInterrupt:
        if not stop_on_interrupt:
            print(f"raymerge: stopped following job {job_id}; it runs on in the cluster", file=err, flush=True)
            return 130
        try:
            client.stop_job(job_id)
            print(f"raymerge: cancelled; stopped job {job_id}", file=err, flush=True)
        except Exception as e:
            print(f"raymerge: cancelled, but could not stop job {job_id}: {_reason(e)}", file=err, flush=True)
        return 130


def _reason(exc: BaseException | None) -> str:
    text = str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _report_end(job_id: str, info: Any, cursor: _Cursor, err: TextIO) -> int:
    status = str(info.status)
    code = exit_code(status, info.driver_exit_code)
    if code:
        message = (info.message or "").strip()
        if cursor.any_chunk:  # the log is on screen already; Ray's message would repeat its end
            message = message.splitlines()[0] if message else ""
        detail = f": {message}" if message and status != "STOPPED" else ""
        print(f"raymerge: job {job_id} {status.lower()} (exit code {code}){detail}", file=err, flush=True)
    return code


# -- `raymerge job` --------------------------------------------------------------------------------


def _details(info: Any) -> dict[str, Any]:
    data = info.model_dump() if hasattr(info, "model_dump") else info.dict()
    data["status"] = str(info.status)
    return data


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) if ms else "-"


def job_status(job_id: str, address: str | None, *, as_json: bool, out: TextIO, err: TextIO) -> int:
    import os

    client, address = connect(address, os.environ, err)
    info = _call(address, lambda: client.get_job_info(job_id))
    if as_json:
        print(json.dumps(_details(info), indent=2, default=str), file=out)
        return 0
    code = exit_code(str(info.status), info.driver_exit_code)
    ended = f", ended {_when(info.end_time)} UTC, exit code {code}" if info.status.is_terminal() else ""
    print(f"{job_id}: {info.status} (started {_when(info.start_time)} UTC{ended})", file=out)
    if info.message:
        print(f"  {info.message.strip().splitlines()[0]}", file=out)
    return 0


def job_logs(
    job_id: str, address: str | None, *, follow_logs: bool, reconnect_timeout: float, out: TextIO, err: TextIO
) -> int:
    """The job's log so far; with `follow_logs`, until it ends, exiting with the job's own exit code."""
    import os

    client, address = connect(address, os.environ, err)
    if not follow_logs:
        out.write(_call(address, lambda: client.get_job_logs(job_id)))
        out.flush()
        return 0
    _call(address, lambda: client.get_job_status(job_id))  # an unknown job is an error, not a wait
    return follow(client, job_id, address, out, err, reconnect_timeout=reconnect_timeout)


def job_stop(job_id: str, address: str | None, *, wait_s: float, out: TextIO, err: TextIO) -> int:
    import os

    client, address = connect(address, os.environ, err)
    _call(address, lambda: client.stop_job(job_id))
    deadline = time.monotonic() + wait_s
    status = _call(address, lambda: client.get_job_status(job_id))
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
        status = _call(address, lambda: client.get_job_status(job_id))
    print(f"{job_id}: {status}", file=out)
    return 0 if status.is_terminal() else 1


def job_list(address: str | None, *, every: bool, as_json: bool, out: TextIO, err: TextIO) -> int:
    """The cluster's raymerge jobs (every job with `every`), oldest first."""
    import os

    client, address = connect(address, os.environ, err)
    jobs = [j for j in _call(address, client.list_jobs) if every or (j.submission_id or "").startswith("raymerge-")]
    jobs.sort(key=lambda j: j.start_time or 0)
    if as_json:
        print(json.dumps([_details(j) for j in jobs], indent=2, default=str), file=out)
        return 0
    if not jobs:
        print("(no raymerge jobs)" if not every else "(no jobs)", file=out)
        return 0
    width = max(len(j.submission_id or j.job_id or "") for j in jobs)
    for j in jobs:
        ident = j.submission_id or j.job_id or "-"
        line = f"{ident:<{width}}  {j.status!s:<9}  {_when(j.start_time)}  {j.entrypoint}"
        print(line, file=out)
    return 0
