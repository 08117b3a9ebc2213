"""The shape every family's plan shares: what `plan` prints and `run` executes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from raymerge.config import BaseConfig
from raymerge.report import Report

C = TypeVar("C", bound=BaseConfig)


@dataclass
class Plan(Generic[C]):
    """Metadata only: resolved inputs, checks passed, and what would be written.

    Families subclass it (`Plan[TheirConfig]`) to carry their own small tables (offsets, keys, layouts)
    to `execute`.
    """

    config: C
    report: Report
    input_fingerprints: list[dict[str, Any]] = field(default_factory=list)
