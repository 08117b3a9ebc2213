"""LeRobot robot datasets (v2.1 and v3.0): merge with re-indexing and remuxed videos, split, convert, and
the editing operations delete_episodes, remove_feature, modify_tasks, recompute_stats, convert_image_to_video
and reencode_videos.

The core knows this family through `FAMILY` (`raymerge.families.Family`). The steps: `config`; `check` (no Ray:
metadata read, inputs compared by `compat`, episodes chosen by `selection`), `plan` (scans and `layout`),
`execute` (write tasks, gathered in `results`, then metadata), `tasks` (the task bodies; `tasks_edit` those
of modify_tasks and recompute_stats, with their checks; `encode_plan` the encode work of
convert_image_to_video and reencode_videos), `describe` (inspect and preview). The formats:
`formats` (paths and versions), `source_meta` (what is read of an input's metadata), `output_meta` (what is
written of an output's), `schema` (the parquet types each version gets), `data` (episode parquet), `scan`,
`video/` (mp4), `stats/` (every statistic); `ranged` reads object storage by byte range, `arrays` holds the
column helpers they share, `samples` makes small datasets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from raymerge.lerobot import describe, tasks
from raymerge.lerobot.check import Checked, check_config
from raymerge.lerobot.config import Config
from raymerge.lerobot.execute import execute as execute_plan
from raymerge.lerobot.plan import LeRobotPlan, build

if TYPE_CHECKING:
    from raymerge.executor import Executor
    from raymerge.families import Family
    from raymerge.report import Report
    from raymerge.storage import Staging

__all__ = ["FAMILY", "Config"]


class LeRobot:
    """The LeRobot family. `check` keeps what it read for the `plan` or `preview_config` of the same config
    object, which take it (once) instead of reading every input's metadata again."""

    kind = "lerobot"
    config = Config

    def __init__(self) -> None:
        self._checked: tuple[Config, Checked] | None = None

    def _take_checked(self, cfg: Config) -> Checked:
        """What `check` read for this very config, or a fresh check."""
        kept, self._checked = self._checked, None
        if kept is not None and kept[0] is cfg:
            return kept[1]
        return check_config(cfg)

    # Metadata of a bare path: nothing to keep between calls.
    detect = staticmethod(describe.detect)
    inspect = staticmethod(describe.inspect)
    preview = staticmethod(describe.preview)

    def preview_config(self, cfg: Config, n: int, executor: Executor) -> list[dict[str, Any]]:
        """The first `n` episodes a config would write (metadata only: the executor runs nothing)."""
        return describe.preview_config(self._take_checked(cfg), n, cfg.tasks)

    def check(self, cfg: Config) -> int:
        """Everything that needs no Ray; the bytes of the input files the run reads."""
        checked = check_config(cfg)
        self._checked = (cfg, checked)
        return checked.input_bytes

    def plan(self, cfg: Config, executor: Executor) -> LeRobotPlan:
        """Scans, probes and layouts: everything a run would do, nothing written."""
        executor.warm_up(tasks.warm_imports)
        return build(cfg, self._take_checked(cfg), executor)

    def execute(self, plan: LeRobotPlan, staging: Staging, executor: Executor) -> Report:
        """Write the planned outputs into staging."""
        return execute_plan(plan, staging, executor)


FAMILY: Family[Config, LeRobotPlan] = LeRobot()
