"""The first code a submitted job runs on the cluster, before anything raymerge itself imports.

`raymerge submit` copies this file into the job's working directory next to the config and
`raymerge-job.json` (the run's requirements and the `${VAR}`s its config reads), and the job runs
`python raymerge_job.py run CONFIG ...`. It uses the standard library only, so a cluster whose Python
lacks a dependency, or lacks a variable the config reads, fails with one line that names what is
missing and how to fix it instead of a traceback. Then it hands over to `raymerge run`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SPEC_NAME = "raymerge-job.json"
LAUNCHER_NAME = "raymerge_job.py"
_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*==\s*([^\s;,]+)")


def missing_requirements(requires: Mapping[str, list[str]]) -> list[str]:
    """The requirements (e.g. `fsspec==2026.9.0`) none of whose top-level modules this Python can import."""
    return [req for req, modules in requires.items() if not any(_importable(m) for m in modules)]


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def version_mismatches(requires: Mapping[str, list[str]]) -> list[str]:
    """`pyarrow 18.0.0 (raymerge pins 26.0.1)` for each installed package whose version differs from its pin."""
    found = []
    for req in requires:
        pin = _PIN.match(req)
        if not pin:
            continue
        name, wanted = pin.groups()
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if have != wanted:
            found.append(f"{name} {have} (raymerge pins {wanted})")
    return found


def unset_variables(refs: list[dict[str, Any]], environ: Mapping[str, str]) -> list[dict[str, Any]]:
    """The `${VAR}`s without a default that the config reads and this environment does not set."""
    return [r for r in refs if not r.get("default") and r["name"] not in environ]


def dependency_message(missing: list[str]) -> str:
    return (
        f"raymerge: error: the cluster's Python ({sys.executable}) lacks {', '.join(missing)}: "
        "run the cluster on an image with raymerge's dependencies (deploy/Dockerfile), "
        "or submit with --with-deps to install them for this job"
    )


def variable_message(unset: list[dict[str, Any]]) -> str:
    names = ", ".join(f"${{{r['name']}}} ({r['where']})" for r in unset)
    hints = []
    if any(not r.get("secret") for r in unset):
        hints.append("submit with --env NAME to send this machine's value of a setting")
    if any(r.get("secret") for r in unset):
        hints.append("give the cluster its credentials itself (its role, or a Secret mounted as environment)")
    return f"raymerge: error: the config reads {names}, not set in the job's environment on the cluster: " + "; ".join(
        hints
    )


def check(spec: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[int, list[str]]:
    """(exit code, lines to print): 0 when the run can start, else 1 (dependencies) or 2 (config)."""
    requires = spec.get("requires") or {}
    missing = missing_requirements(requires)
    if missing:
        return 1, [dependency_message(missing)]
    lines = [f"raymerge: warning: the cluster has {m}" for m in version_mismatches(requires)]
    unset = unset_variables(spec.get("env_refs") or [], environ)
    if unset:
        return 2, [*lines, variable_message(unset)]
    return 0, lines


def main(argv: list[str]) -> int:
    import os

    spec_path = Path(__file__).resolve().with_name(SPEC_NAME)
    spec = json.loads(spec_path.read_text()) if spec_path.is_file() else {}
    code, lines = check(spec, os.environ)
    for line in lines:
        print(line, file=sys.stderr, flush=True)
    if code:
        return code
    try:
        from raymerge.cli import main as cli
    except ModuleNotFoundError as e:  # a module the requirement list does not name (a dependency's dependency)
        print(dependency_message([e.name or str(e)]), file=sys.stderr, flush=True)
        return 1
    cli(args=argv, prog_name="raymerge")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
