"""The contract between the core and a family, and the registry of families.

A family package owns one dataset format. It exposes `FAMILY`, an object with the methods of `Family`;
the core (`api`, `cli`) knows families only through it. Data flows one way through these methods:
`check` (no Ray: config, paths, schemas, counts from metadata) -> `plan` (metadata only, may run scan
tasks) -> `execute` (payload tasks writing into staging) -> the core commits and reports.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from raymerge.config import BaseConfig, read_config, validate
from raymerge.errors import InvalidInput

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from raymerge.executor import Executor
    from raymerge.plan import Plan
    from raymerge.report import Report
    from raymerge.storage import Staging

C = TypeVar("C", bound=BaseConfig)
P = TypeVar("P", bound="Plan[Any]")

# Probed in this order by `inspect`/`preview` of a bare path: the most specific layout first.
FAMILIES = {
    "lerobot": "raymerge.lerobot",
    "webdataset": "raymerge.webdataset",
    "text": "raymerge.text",
}


class Family(Protocol[C, P]):
    """What every family provides. `C` is its config class, `P` its plan."""

    kind: str
    config: type[C]

    def detect(self, fs: AbstractFileSystem, path: str) -> bool:
        """True when `path` holds a dataset of this family (cheap: a listing or one small file)."""
        ...

    def inspect(self, fs: AbstractFileSystem, path: str) -> dict[str, Any]:
        """What the dataset is: format, version, counts, features."""
        ...

    def preview(self, fs: AbstractFileSystem, path: str, n: int) -> list[dict[str, Any]]:
        """The dataset's first `n` records."""
        ...

    def preview_config(self, cfg: C, n: int, executor: Executor) -> list[dict[str, Any]]:
        """The first `n` records a config would write."""
        ...

    def check(self, cfg: C) -> int:
        """Everything that needs no Ray, before Ray starts; returns the inputs' total bytes (sizes the run)."""
        ...

    def plan(self, cfg: C, executor: Executor) -> P:
        """Resolve and check everything a run would do; metadata only, nothing written."""
        ...

    def execute(self, plan: P, staging: Staging, executor: Executor) -> Report:
        """Write the planned output into `staging`; the core commits it."""
        ...


def family(kind: str) -> Family[Any, Any]:
    if kind not in FAMILIES:
        raise InvalidInput(f"kind {kind!r} is not known; expected one of: {', '.join(sorted(FAMILIES))}")
    return importlib.import_module(FAMILIES[kind]).FAMILY


def config_class(kind: object, source: str) -> type[BaseConfig]:
    """The config class of `kind`, or an error naming the key."""
    if kind is None:
        raise InvalidInput(f"invalid config {source}:\n  kind: required key is missing")
    if not isinstance(kind, str) or kind not in FAMILIES:
        raise InvalidInput(
            f"invalid config {source}:\n  kind: {kind!r} is not known; expected one of: {', '.join(sorted(FAMILIES))}"
        )
    return family(kind).config


def load_config(
    source: str | Path | Mapping[str, Any],
    overrides: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> BaseConfig:
    """Read, override, interpolate and validate a config against its family's schema."""
    raw, data, label = read_config(source, overrides, environ)
    return validate(config_class(data.get("kind"), label), raw, data, label)
