"""The `kind: lerobot` config: merge (also conversion, with one input), split, and the editing operations
(`delete_episodes`, `remove_feature`, `modify_tasks`, `recompute_stats`)."""

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


class TasksEdit(Model):
    """`modify_tasks`, LeRobot's three forms: `set` one task for every episode and/or `episodes` one task per
    named episode (each episode then has exactly one task), or `replace` substrings of every task text."""

    set: str | None = None
    episodes: dict[int, str] | None = None
    replace: dict[str, str] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> TasksEdit:
        if self.set is None and not self.episodes and not self.replace:
            raise ValueError("tasks: give `set`, `episodes` or `replace`")
        if self.replace and (self.set is not None or self.episodes):
            raise ValueError("tasks.replace cannot be combined with tasks.set or tasks.episodes (which replace tasks)")
        texts = [self.set] if self.set is not None else []
        for text in texts + list((self.episodes or {}).values()):
            if not text.strip():
                raise ValueError("tasks: a task cannot be empty")
        if any(not old for old in self.replace or {}):
            raise ValueError("tasks.replace: the text to replace cannot be empty")
        return self


class RelativeAction(Model):
    """Stats of `action` relative to `observation.state` as LeRobot computes them for relative-action policies:
    every window of `chunk_size` frames within an episode, minus the state at its first frame, except the
    action dimensions whose name contains one of `exclude_joints`."""

    chunk_size: int = Field(default=50, gt=0)
    exclude_joints: list[str] = Field(default_factory=lambda: ["gripper"])


# The operations that encode videos, with the `encode:` options.
ENCODE_OPERATIONS = ("convert_image_to_video", "reencode_videos")


class DepthOptions(Model):
    """How single-channel depth images are encoded (LeRobot's depth encoder): depths in metres (16-bit images in
    millimetres) quantized to 12 bits over [depth_min, depth_max], logarithmically after a `shift` or linearly,
    then stored losslessly as 12-bit grey HEVC."""

    depth_min: float = Field(default=0.01, ge=0)
    depth_max: float = Field(default=10.0, gt=0)
    shift: float = Field(default=3.5, ge=0)
    use_log: bool = True

    @model_validator(mode="after")
    def _range(self) -> DepthOptions:
        if self.depth_max <= self.depth_min:
            raise ValueError("encode.depth: depth_max must be above depth_min")
        return self


class EncodeOptions(Model):
    """The encoder of convert_image_to_video and reencode_videos, LeRobot's `encode_video_frames` options:
    `codec` (h264, hevc, av1 or an encoder name), `crf`, `gop` (keyframe interval), `preset`, `pix_fmt`,
    `fast_decode`; `keys` limits the run to some cameras (default: every image feature, or every video);
    `frames_per_task`: a longer output file is encoded in pieces of about that many frames, each by its own
    task, then joined by packet copy (a piece starts with a keyframe, nothing else changes)."""

    codec: str = "av1"
    crf: float | None = Field(default=30, ge=0)
    gop: int | None = Field(default=2, gt=0)
    preset: int | str | None = None
    pix_fmt: str = "yuv420p"
    fast_decode: int = Field(default=0, ge=0)
    keys: list[str] | None = None
    depth: DepthOptions = Field(default_factory=DepthOptions)
    frames_per_task: int = Field(default=1000, gt=0)


class Config(BaseConfig):
    """`kind: lerobot`: merge (conversion with one input), split, delete_episodes (one input, the episodes of
    `delete` left out; the rest re-indexed as a merge of the others would be), remove_feature (one input,
    the features named in `remove` dropped), modify_tasks (one input, `tasks:` edited) or recompute_stats
    (one input, every stat recomputed), convert_image_to_video or reencode_videos (one input, cameras encoded
    with the `encode:` options), checked for the operation's shape.

    `stats` is the policy for the per-episode image/video stats of frames a run copies: `carry` the sources'
    or `recompute` them from the decoded output; default carry, recompute for recompute_stats.
    `recompute_video_stats: true` is the older spelling of `stats: recompute`."""

    kind: Literal["lerobot"]
    operation: Literal[
        "merge",
        "split",
        "delete_episodes",
        "remove_feature",
        "modify_tasks",
        "recompute_stats",
        "convert_image_to_video",
        "reencode_videos",
    ] = "merge"
    inputs: list[LeRobotInput] = Field(min_length=1)
    output: LeRobotOutput
    split: SplitConfig | None = None
    delete: EpisodeSelection | None = None
    remove: list[str] | None = None
    tasks: TasksEdit | None = None
    stats: Literal["carry", "recompute"] | None = None
    relative_action: RelativeAction | None = None
    encode: EncodeOptions | None = None
    recompute_video_stats: bool = False

    @model_validator(mode="after")
    def _operation_shape(self) -> Config:
        single = ("split", "delete_episodes", "remove_feature", "modify_tasks", "recompute_stats", *ENCODE_OPERATIONS)
        if self.operation in single and len(self.inputs) != 1:
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
        if (self.operation == "modify_tasks") != (self.tasks is not None):
            raise ValueError("operation modify_tasks needs `tasks:`, which only applies to it")
        if self.encode is not None and self.operation not in ENCODE_OPERATIONS:
            raise ValueError("`encode:` only applies to operations " + " and ".join(ENCODE_OPERATIONS))
        if self.relative_action is not None and self.operation != "recompute_stats":
            raise ValueError("`relative_action:` only applies to operation recompute_stats")
        if self.recompute_video_stats and self.stats == "carry":
            raise ValueError("recompute_video_stats: true contradicts stats: carry")
        return self

    @property
    def recompute_cameras(self) -> bool:
        """Whether per-episode image/video stats come from the decoded output rather than the sources."""
        if self.stats is not None:
            return self.stats == "recompute"
        return self.recompute_video_stats or self.operation == "recompute_stats"

    @property
    def removed(self) -> set[str]:
        """The features the output leaves out."""
        return set(self.remove or [])
