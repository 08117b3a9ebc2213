"""The `kind: lerobot` config: merge (also conversion, with one input) and split."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from raymerge.config import BaseConfig, InputConfig, Model, OutputConfig

# "10:50" (end exclusive, either end optional) or an explicit list of episode indices.
EpisodeSelection = str | list[int]


class LeRobotInput(InputConfig):
    """An input dataset, optionally only some of its episodes."""

    episodes: EpisodeSelection | None = None


class LeRobotOutput(OutputConfig):
    """The output dataset: its version (`same` keeps the inputs') and LeRobot's file size and chunk caps."""

    format_version: Literal["same", "v3.0", "v2.1"] = "same"
    data_files_size_in_mb: float = Field(default=100, gt=0)
    video_files_size_in_mb: float = Field(default=200, gt=0)
    chunks_size: int = Field(default=1000, gt=0)


class SplitConfig(Model):
    """How `split` divides the episodes: by fractions (shuffled with a seed) or by explicit episode lists."""

    fractions: dict[str, float] | None = None
    episodes: dict[str, EpisodeSelection] | None = None
    seed: int | None = None

    @model_validator(mode="after")
    def _one_way(self) -> SplitConfig:
        if (self.fractions is None) == (self.episodes is None):
            raise ValueError("give exactly one of split.fractions or split.episodes")
        if self.seed is not None and self.fractions is None:
            raise ValueError("split.seed only applies to split.fractions")
        return self


class Config(BaseConfig):
    """`kind: lerobot`: merge (conversion with one input) or split, checked for the operation's shape."""

    kind: Literal["lerobot"]
    operation: Literal["merge", "split"] = "merge"
    inputs: list[LeRobotInput] = Field(min_length=1)
    output: LeRobotOutput
    split: SplitConfig | None = None
    recompute_video_stats: bool = False

    @model_validator(mode="after")
    def _operation_shape(self) -> Config:
        if self.operation == "split":
            if self.split is None:
                raise ValueError("operation split needs a `split:` section (fractions or episodes)")
            if len(self.inputs) != 1:
                raise ValueError(f"operation split takes exactly one input, got {len(self.inputs)}")
        elif self.split is not None:
            raise ValueError("`split:` only applies to operation split")
        return self
