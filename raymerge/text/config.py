"""The `kind: text` config: inputs with their format hints, the combine options, the output targets."""

from __future__ import annotations

import math
import posixpath
import re
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from raymerge.config import BaseConfig, InputConfig, Location, Model, OutputConfig

SourceFormat = Literal["auto", "hf", "save_to_disk", "json", "jsonl", "parquet", "csv", "sqlite"]
TargetFormat = Literal["auto", "jsonl", "json", "parquet", "sqlite", "hf", "save_to_disk"]
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
# Formats written as a folder rather than one file.
FOLDER_FORMATS = ("hf", "save_to_disk")
# numpy's `Generator.choice` accepts probabilities whose sum is within sqrt(eps) of 1.
PROBABILITY_TOLERANCE = math.sqrt(2.220446049250313e-16)
# `datasets.utils.py_utils.convert_file_size_to_int`'s units, so a size means what it means to `datasets`.
_SIZE_UNITS = {
    "PIB": 2**50,
    "TIB": 2**40,
    "GIB": 2**30,
    "MIB": 2**20,
    "KIB": 2**10,
    "PB": 10**15,
    "TB": 10**12,
    "GB": 10**9,
    "MB": 10**6,
    "KB": 10**3,
    "B": 1,
}
DEFAULT_MAX_SHARD_SIZE = "500MB"  # the default of `push_to_hub` and `save_to_disk`


def target_format(path: str, fmt: str) -> str:
    """The format of an output target: explicit, else from the file extension, so `out.parquet` needs no
    `format:` key."""
    if fmt != "auto":
        return fmt
    ext = posixpath.splitext(path.rstrip("/"))[1].lower()
    if ext not in _EXTENSIONS:
        raise ValueError(
            f"cannot tell the format of {path!r} from its extension; use one of {', '.join(sorted(_EXTENSIONS))} "
            "or set format: jsonl | json | parquet | sqlite | hf | save_to_disk"
        )
    return _EXTENSIONS[ext]


def size_in_bytes(size: int | str) -> int:
    """`500MB`, `1GiB` or a number of bytes, as `datasets` reads `max_shard_size`."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", size)
    unit = (m.group(2) or "B").upper() if m else ""
    if m is None or unit not in _SIZE_UNITS:
        raise ValueError(f"{size!r} is not a size; write bytes or e.g. 500MB, 2GB, 512MiB")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


class Roles(Model):
    """Role names of a conversation's turns, replacing the default table for the side they name."""

    user: list[str] | None = None
    assistant: list[str] | None = None
    system: list[str] | None = None

    @field_validator("user", "assistant", "system", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self) -> Roles:
        sides = {k: v for k, v in (("user", self.user), ("assistant", self.assistant), ("system", self.system)) if v}
        if not sides:
            raise ValueError("give user, assistant or system role names")
        seen: dict[str, str] = {}
        for side, names in sides.items():
            for name in names:
                key = name.strip().lower()
                if not key:
                    raise ValueError(f"{side}: an empty role name")
                if key in seen and seen[key] != side:
                    raise ValueError(f"role {name!r} is given for both {seen[key]} and {side}")
                seen[key] = side
        return self


class SessionRef(Model):
    """A FineFoundry session chosen by its id or by its name, spelled out."""

    id: int | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _one(self) -> SessionRef:
        if (self.id is None) == (self.name is None):
            raise ValueError("give either id or name")
        return self


class TextInput(InputConfig):
    """One source; the hints choose within it (split, config, session) or override the column auto-mapping."""

    format: SourceFormat = "auto"
    split: str | None = None
    config: str | None = Field(default=None, description="Hugging Face config (subset) name")
    session: int | str | SessionRef | None = Field(
        default=None, description="FineFoundry session: its id (a number), its name, or {id: N} / {name: X}"
    )
    input_column: str | None = None
    output_column: str | None = None
    roles: Roles | None = Field(default=None, description="role names of conversation turns, per side")

    @field_validator("session", mode="before")
    @classmethod
    def _session_mapping(cls, v: object) -> object:
        """`{id: 3}` / `{name: x}` checked here, so that a mistake is one line rather than one per union member."""
        if not isinstance(v, dict):
            return v
        unknown = sorted(set(map(str, v)) - {"id", "name"})
        if unknown or len(v) != 1:
            raise ValueError(f"expected {{id: N}} or {{name: X}}, got {v}")
        try:
            return SessionRef.model_validate(v)
        except ValidationError as e:
            raise ValueError(f"expected {{id: N}} or {{name: X}}, got {v} ({e.errors()[0]['msg']})") from None

    @model_validator(mode="after")
    def _both_columns(self) -> TextInput:
        if (self.input_column is None) != (self.output_column is None):
            raise ValueError("input_column and output_column are given together or not at all")
        return self

    def session_choice(self) -> int | str | None:
        """The session asked for: an int is an id, a str a name."""
        if isinstance(self.session, SessionRef):
            return self.session.id if self.session.id is not None else self.session.name
        return self.session


class Target(Model):
    """Where merged rows go, and in which format (sqlite: as a new session named `session_name`; hf and
    save_to_disk: a folder of `split` in shards of at most `max_shard_size`)."""

    format: TargetFormat = "auto"
    session_name: str | None = None
    split: str | None = None
    max_shard_size: int | str | None = None

    def resolved_format(self) -> str:
        """The format this target is written in, whether it was named or follows from the extension."""
        return target_format(self.path, self.format)  # type: ignore[attr-defined]

    def is_folder(self) -> bool:
        """Whether the target is a dataset folder (hf, save_to_disk) rather than one file."""
        return self.resolved_format() in FOLDER_FORMATS

    def shard_bytes(self) -> int:
        return size_in_bytes(self.max_shard_size or DEFAULT_MAX_SHARD_SIZE)

    @model_validator(mode="after")
    def _check_format(self) -> Target:
        fmt = self.resolved_format()
        if fmt == "sqlite" and not self.session_name:
            raise ValueError("session_name is required when writing a SQLite database")
        if fmt != "sqlite" and self.session_name:
            raise ValueError("session_name only applies to SQLite outputs")
        if fmt not in FOLDER_FORMATS and (self.split is not None or self.max_shard_size is not None):
            raise ValueError("split and max_shard_size only apply to format: hf or save_to_disk")
        if self.split is not None and not re.fullmatch(r"\w+(\.\w+)*", self.split):
            raise ValueError(f"split {self.split!r}: use letters, digits, _ and . (as Hugging Face split names)")
        if self.shard_bytes() <= 0:
            raise ValueError("max_shard_size must be above 0")
        return self


class TextOutput(Target, OutputConfig):
    """The main output: one file or folder, committed by the core after every export."""


class Export(Target, Location):
    """A second copy of the merged rows in another format, written from the same parts as the output.
    `overwrite` unset follows `output.overwrite` (and so `--overwrite`)."""

    overwrite: bool | None = None


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
    """A `kind: text` run: which inputs, concat or interleave, pairs or whole rows, where they go."""

    kind: Literal["text"]
    operation: Literal["concat", "interleave"]
    inputs: list[TextInput] = Field(min_length=1)
    output: TextOutput
    columns: Literal["pairs", "keep"] = Field(
        default="pairs", description="pairs: map every source to input/output; keep: whole rows, as `datasets` merges"
    )
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
        if self.columns == "keep":
            for i, inp in enumerate(self.inputs):
                if inp.input_column is not None or inp.roles is not None:
                    raise ValueError(f"inputs[{i}]: input_column, output_column and roles apply to columns: pairs")
            for where, t in [("output", self.output)] + [(f"exports[{i}]", e) for i, e in enumerate(self.exports)]:
                if t.resolved_format() == "sqlite":
                    raise ValueError(f"{where}: a FineFoundry session holds input/output pairs; use columns: pairs")
            if self.dedup is not None:
                raise ValueError("dedup compares input/output pairs; it applies to columns: pairs")
        return self

    @property
    def combine(self) -> Interleave:
        """The interleave options, or HF's defaults when the config gives none."""
        return self.interleave or Interleave()

    def export_overwrite(self, export: Export) -> bool:
        """An export replaces an existing target when it says so, else when the output does."""
        return self.output.overwrite if export.overwrite is None else export.overwrite

    def output_is_file(self) -> bool:
        """A text output is one file, or a dataset folder for hf and save_to_disk."""
        return not self.output.is_folder()

    def output_allow_existing(self) -> bool:
        """A database may exist: it gains a session (whether that session exists is checked by `check`)."""
        return self.output.resolved_format() == "sqlite"
