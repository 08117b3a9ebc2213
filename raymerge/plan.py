"""The shape every family's plan shares: what `plan` prints and `run` executes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from raymerge.config import BaseConfig
from raymerge.report import Report


@dataclass
class Plan:
    """Metadata only: resolved inputs, checks passed, and what would be written.

    Families subclass it to carry their own small tables (offsets, keys, layouts) to `execute`.
    """

    config: BaseConfig
    report: Report
    input_fingerprints: list[dict[str, Any]] = field(default_factory=list)
