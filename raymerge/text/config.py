"""The `kind: text` config: inputs with their format hints, the combine options, the output targets."""

from __future__ import annotations

import math
import posixpath
from typing import Literal

from pydantic import Field, model_validator

from raymerge.config import BaseConfig, InputConfig, Location, Model, OutputConfig

SourceFormat = Literal["auto", "hf", "save_to_disk", "json", "jsonl", "parquet", "csv", "sqlite"]
TargetFormat = Literal["auto", "jsonl", "json", "parquet", "sqlite"]
StoppingStrategy = Literal["first_exhausted", "all_exhausted", "all_exhausted_without_replacement"]

_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".db": "sqlite",
    ".sqlite": "sqlite",
    ".sqlite3": "sqlite",
}
# numpy's `Generator.choice` accepts probabilities whose sum is within sqrt(eps) of 1.
PROBABILITY_TOLERANCE = math.sqrt(2.220446049250313e-16)


def target_format(path: str, fmt: str) -> str:
    """The format of an output target: explicit, else from the file extension, so `out.parquet` needs no
    `format:` key."""
    if fmt != "auto":
        return fmt
    ext = posixpath.splitext(path.rstrip("/"))[1].lower()
    if ext not in _EXTENSIONS:
        raise ValueError(
            f"cannot tell the format of {path!r} from its extension; "
            f"use one of {', '.join(sorted(_EXTENSIONS))} or set format: jsonl | json | parquet | sqlite"
        )
    return _EXTENSIONS[ext]


class TextInput(InputConfig):
    """One source; the hints choose within it (split, config, session) or override the column auto-mapping."""

    format: SourceFormat = "auto"
    split: str | None = None
    config: str | None = Field(default=None, description="Hugging Face config (subset) name")
    session: str | int | None = Field(default=None, description="FineFoundry session name or id")
    input_column: str | None = None
    output_column: str | None = None

    @model_validator(mode="after")
    def _both_columns(self) -> TextInput:
        if (self.input_column is None) != (self.output_column is None):
            raise ValueError("input_column and output_column are given together or not at all")
        return self


class Target(Model):
    """Where merged pairs go, and in which format (sqlite: as a new session named `session_name`)."""

    format: TargetFormat = "auto"
    session_name: str | None = None

    def resolved_format(self) -> str:
        """The format this target is written in, whether it was named or follows from the extension."""
        return target_format(self.path, self.format)  # type: ignore[attr-defined]

    @model_validator(mode="after")
    def _check_format(self) -> Target:
        fmt = self.resolved_format()
        if fmt == "sqlite" and not self.session_name:
            raise ValueError("session_name is required when writing a SQLite database")
        if fmt != "sqlite" and self.session_name:
            raise ValueError("session_name only applies to SQLite outputs")
        return self


class TextOutput(Target, OutputConfig):
    """The main output: one file, committed by the core after every export."""


class Export(Target, Location):
    """A second copy of the merged pairs in another format, written from the same parts as the output."""

    overwrite: bool = False


class Interleave(Model):
    """The options of HF's `interleave_datasets`, with its defaults, so a config reproduces its order."""

    probabilities: list[float] | None = None
    seed: int | None = None
    stopping_strategy: StoppingStrategy = "first_exhausted"

    @model_validator(mode="after")
    def _check_probabilities(self) -> Interleave:
        p = self.probabilities
        if p is None:
            return self
        if any(x < 0 or not math.isfinite(x) for x in p):
            raise ValueError(f"probabilities must be non-negative numbers (got {p})")
        if abs(math.fsum(p) - 1.0) > PROBABILITY_TOLERANCE:
            raise ValueError(f"probabilities must sum to 1 (got {p}, sum {math.fsum(p)})")
        return self


class Config(BaseConfig):
    """A `kind: text` run: which inputs, concat or interleave, where the pairs go."""

    kind: Literal["text"]
    operation: Literal["concat", "interleave"]
    inputs: list[TextInput] = Field(min_length=1)
    output: TextOutput
    interleave: Interleave | None = None
    dedup: Literal["exact"] | None = None
    exports: list[Export] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_combine(self) -> Config:
        if self.operation == "concat" and self.interleave is not None:
            raise ValueError("interleave options only apply to operation: interleave")
        p = self.interleave.probabilities if self.interleave else None
        if p is not None and len(p) != len(self.inputs):
            raise ValueError(f"interleave.probabilities has {len(p)} values but there are {len(self.inputs)} inputs")
        return self

    @property
    def combine(self) -> Interleave:
        """The interleave options, or HF's defaults when the config gives none."""
        return self.interleave or Interleave()

    def output_is_file(self) -> bool:
        """Every text output is one file (staged beside the target, then renamed)."""
        return True

    def output_allow_existing(self) -> bool:
        """A database may exist: it gains a session (whether that session exists is checked by `check`)."""
        return self.output.resolved_format() == "sqlite"
