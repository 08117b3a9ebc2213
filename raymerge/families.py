"""The one place that knows which families exist; everything else asks here by `kind`."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from raymerge.errors import InvalidInput

if TYPE_CHECKING:
    from raymerge.config import BaseConfig

# Probed in this order by `inspect`/`preview` of a bare path: the most specific layout first.
FAMILIES = {
    "lerobot": "raymerge.lerobot",
    "webdataset": "raymerge.webdataset",
    "text": "raymerge.text",
}


def family(kind: str) -> ModuleType:
    if kind not in FAMILIES:
        raise InvalidInput(f"kind {kind!r} is not known; expected one of: {', '.join(sorted(FAMILIES))}")
    return importlib.import_module(FAMILIES[kind])


def family_config(kind: object, source: str) -> type[BaseConfig]:
    if kind is None:
        raise InvalidInput(f"invalid config {source}:\n  kind: required key is missing")
    if not isinstance(kind, str) or kind not in FAMILIES:
        raise InvalidInput(
            f"invalid config {source}:\n  kind: {kind!r} is not known; expected one of: {', '.join(sorted(FAMILIES))}"
        )
    return family(kind).Config
