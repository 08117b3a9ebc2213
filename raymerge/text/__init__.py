"""`kind: text`: instruction/pair datasets merged with Hugging Face `datasets` semantics.

Sources (HF folders, JSON/JSONL/Parquet/CSV, compressed or not, FineFoundry SQLite sessions) are normalised
to `input`/`output` pairs (or kept as whole rows with `datasets`' feature alignment), combined by concat or
interleave in HF's exact order, and written as JSONL, JSON, Parquet, a new FineFoundry session, or a dataset
folder `datasets` loads (Hub Parquet layout, save_to_disk), plus optional exports.
"""

from __future__ import annotations

from typing import Any

from fsspec import AbstractFileSystem

from raymerge.executor import Executor
from raymerge.families import Family
from raymerge.report import Report
from raymerge.storage import Staging
from raymerge.text import describe
from raymerge.text import execute as writing
from raymerge.text import plan as planning
from raymerge.text.config import Config
from raymerge.text.plan import TextPlan


class TextFamily:
    """The text family as the core sees it: each step is handed to the module that owns it."""

    kind = "text"
    config = Config

    def detect(self, fs: AbstractFileSystem, path: str) -> bool:
        """Whether a bare path given to inspect or preview is a text dataset."""
        return describe.detect(fs, path)

    def inspect(self, fs: AbstractFileSystem, path: str) -> dict[str, Any]:
        """What a text dataset holds, for `raymerge inspect`."""
        return describe.inspect(fs, path)

    def preview(self, fs: AbstractFileSystem, path: str, n: int) -> list[dict[str, Any]]:
        """A dataset's first pairs, for `raymerge preview PATH`."""
        return describe.preview(fs, path, n)

    def preview_config(self, cfg: Config, n: int, executor: Executor) -> list[dict[str, Any]]:
        """A config's first output pairs; read in this process, since n pairs per source decide them."""
        return describe.preview_config(cfg, n)

    def check(self, cfg: Config) -> int:
        """Targets and inputs checked before any executor starts; the inputs' bytes."""
        return planning.check(cfg)

    def plan(self, cfg: Config, executor: Executor) -> TextPlan:
        """The scanned inputs, the output order and its blocks."""
        return planning.plan(cfg, executor)

    def execute(self, plan: TextPlan, staging: Staging, executor: Executor) -> Report:
        """The output and exports, written by block and target tasks."""
        return writing.execute(plan, staging, executor)


FAMILY: Family[Config, TextPlan] = TextFamily()

__all__ = ["FAMILY", "Config", "TextFamily", "TextPlan"]
