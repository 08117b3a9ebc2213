"""The `kind: webdataset` config: inputs, output shard layout, Energon metadata and per-operation options."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PrivateAttr

from raymerge.config import BaseConfig, InputConfig, Model, OutputConfig
from raymerge.errors import InvalidInput

if TYPE_CHECKING:
    from raymerge.webdataset.sources import Listing

Nonmatch = Literal["error", "skip", "none"]
OnDuplicateKey = Literal["error", "prefix", "renumber"]
StoppingStrategy = Literal["first_exhausted", "all_exhausted", "all_exhausted_without_replacement"]


class WdsInput(InputConfig):
    """A folder (searched recursively for tars), one tar, or a brace pattern; `shards` lists URLs instead."""

    shards: list[str] | None = Field(default=None, min_length=1)
    nonmatch: Nonmatch | None = None
    prefix: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$")
    weight: float | None = Field(default=None, gt=0)


class Shuffle(Model):
    """A seeded order that depends only on each sample's key."""

    seed: int = 0


class WdsOutput(OutputConfig):
    """Shard layout (`maxcount`, `maxsize`, `pattern`), fixed headers and the Energon metadata written beside."""

    maxcount: int = Field(default=10_000, gt=0, description="samples per shard")
    maxsize: int = Field(default=1_000_000_000, gt=0, description="payload bytes per shard")
    pattern: str = Field(default="shard-%06d.tar", pattern=r"%0?\d*d.*\.tar$")
    shuffle: Shuffle | None = None
    mtime: int = Field(default=0, ge=0, description="the fixed modification time of every member")
    energon: bool = True
    split_ratio: dict[str, float] | None = None
    sample_type: str | None = None
    field_map: dict[str, str] | None = None


class Config(BaseConfig):
    """`kind: webdataset`: join by key, concat, blend (Hugging Face interleave order) or reshard."""

    kind: Literal["webdataset"]
    operation: Literal["join", "concat", "blend", "reshard"]
    inputs: list[WdsInput] = Field(min_length=1)
    output: WdsOutput
    on_duplicate_key: OnDuplicateKey = "error"
    seed: int = 0
    stopping_strategy: StoppingStrategy = "first_exhausted"
    _listing: tuple[list[dict[str, Any]], Listing] | None = PrivateAttr(default=None)

    def remember_listing(self, listing: Listing) -> None:
        """Keep the inputs' shards as `check` listed them, for the `plan` of the same run."""
        self._listing = ([inp.model_dump() for inp in self.inputs], listing)

    def remembered_listing(self) -> Listing | None:
        """The listing `check` kept, or None when there is none or the inputs changed since."""
        if self._listing is None or self._listing[0] != [inp.model_dump() for inp in self.inputs]:
            return None
        return self._listing[1]


def check(cfg: Config) -> None:
    """Rules that span several keys; pydantic checks each key on its own."""
    problems: list[str] = []
    op = cfg.operation
    for i, inp in enumerate(cfg.inputs):
        if inp.nonmatch is not None and (op != "join" or i == 0):
            where = "the primary (first) input of a join" if op == "join" else f"operation {op}"
            problems.append(f"inputs[{i}].nonmatch: not allowed on {where}; it applies to join secondaries only")
        if inp.prefix is not None and op != "join":
            problems.append(f"inputs[{i}].prefix: only used by operation join")
        if inp.weight is not None and op != "blend":
            problems.append(f"inputs[{i}].weight: only used by operation blend")
    weights = [inp.weight is not None for inp in cfg.inputs]
    if op == "blend" and any(weights) and not all(weights):
        problems.append("inputs[*].weight: give every input a weight, or none for round-robin")
    if op == "blend" and cfg.stopping_strategy == "all_exhausted" and cfg.on_duplicate_key != "renumber":
        problems.append(
            "stopping_strategy: all_exhausted repeats samples, so their keys would repeat; set on_duplicate_key: renumber"
        )
    if op == "join" and len(cfg.inputs) < 2:
        problems.append("inputs: a join needs a primary and at least one secondary input")
    if op == "blend" and cfg.output.shuffle is not None:
        problems.append("output.shuffle: a blend is already ordered by its seed; remove output.shuffle")
    if op == "join" and cfg.on_duplicate_key != "error":
        problems.append("on_duplicate_key: a join matches keys, so they cannot be renamed; leave it at error")
    if cfg.output.field_map is not None and cfg.output.sample_type is None:
        problems.append("output.field_map: needs output.sample_type (e.g. CaptioningSample)")
    if cfg.output.split_ratio is not None and (
        not cfg.output.split_ratio or any(v <= 0 for v in cfg.output.split_ratio.values())
    ):
        problems.append("output.split_ratio: give each split a ratio > 0, e.g. {train: 0.9, val: 0.1}")
    if problems:
        raise InvalidInput("invalid webdataset config:\n  " + "\n  ".join(problems))
