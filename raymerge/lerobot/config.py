"""The `kind: lerobot` config: merge (also conversion, with one input), split, and the editing operations
(`delete_episodes`, `remove_feature`)."""

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
    """`kind: lerobot`: merge (conversion with one input), split, delete_episodes (one input, the episodes of
    `delete` left out; the rest re-indexed as a merge of the others would be) or remove_feature (one input,
    the features named in `remove` dropped), checked for the operation's shape."""

    kind: Literal["lerobot"]
    operation: Literal["merge", "split", "delete_episodes", "remove_feature"] = "merge"
    inputs: list[LeRobotInput] = Field(min_length=1)
    output: LeRobotOutput
    split: SplitConfig | None = None
    delete: EpisodeSelection | None = None
    remove: list[str] | None = None
    recompute_video_stats: bool = False

    @model_validator(mode="after")
    def _operation_shape(self) -> Config:
        if self.operation in ("split", "delete_episodes", "remove_feature") and len(self.inputs) != 1:
            raise ValueError(f"operation {self.operation} takes exactly one input, got {len(self.inputs)}")
        if self.operation == "split" and self.split is None:
            raise ValueError("operation split needs a `split:` section (fractions or episodes)")
        if self.operation != "split" and self.split is not None:
            raise ValueError("`split:` only applies to operation split")
        if self.operation == "delete_episodes":
            if self.delete is None:
                raise ValueError("operation delete_episodes needs `delete:` (the episodes to leave out)")
            if self.inputs[0].episodes is not None:
                raise ValueError("operation delete_episodes takes `delete:`, not inputs[0].episodes")
        elif self.delete is not None:
            raise ValueError("`delete:` only applies to operation delete_episodes")
        if self.operation == "remove_feature" and not self.remove:
            raise ValueError("operation remove_feature needs `remove:` (the features to drop)")
        if self.operation != "remove_feature" and self.remove is not None:
            raise ValueError("`remove:` only applies to operation remove_feature")
        return self

    @property
    def removed(self) -> set[str]:
        """The features the output leaves out."""
        return set(self.remove or [])
