"""What environment a submitted job carries: the config's `${VAR}`s, the `--env` values sent, and its runtime_env.

The job carries the config file as written, its `${VAR}`s unresolved: they are read on the cluster,
where the run happens. No credential goes with it: the cluster uses its own identity (instance
profile, IRSA, mounted Secrets). Only variables named with `--env` travel, and everyone who can list
the cluster's jobs can read them, so names that look like credentials are refused. Every rule about
what leaves this machine is here, in one place.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from raymerge.config import _ENV_PATTERN, _SECRET_KEY, key_path
from raymerge.errors import InvalidInput, RunFailed
from raymerge.runtime import looks_secret

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
