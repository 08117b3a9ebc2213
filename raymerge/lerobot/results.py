"""What the write tasks of one output dataset returned, gathered on the driver in an order that does not
depend on which task finished first."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raymerge.lerobot.data import DataResult
from raymerge.lerobot.layout import Layout
from raymerge.lerobot.stats.summary import Summary, merge_all
from raymerge.lerobot.video.write import VideoResult, copy_placements


@dataclass
class TaskResults:
    """Stats summaries, the scratch files of per-episode stats and, per camera, each episode's (from, to)
    timestamps (NaN until its video is placed).

    Data results are taken in the order their tasks were submitted, whatever order they finish in: the same
    inputs always give the same stats.json to the last bit, and the per-episode stats files are in episode
    order."""

    summaries: dict[str, Summary] = field(default_factory=dict)
    early: dict[int, tuple[list[DataResult], str]] = field(default_factory=dict)  # by task number
    merged: int = 0  # data tasks taken so far
    stats_files: list[str] = field(default_factory=list)
    placements: dict[str, np.ndarray] = field(default_factory=dict)
    video_stats: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)  # by episode, then camera
    histograms: dict[str, np.ndarray] = field(default_factory=dict)  # pixel counts per camera (decoded)
    reencoded: set[int] = field(default_factory=set)
    copied: int = 0
    files: list[str] = field(default_factory=list)

    @classmethod
    def planned(cls, layout: Layout) -> TaskResults:
        """Placements known before any task runs: whole-file copies keep the source's timestamps."""
        got = cls()
        for job in layout.video_jobs:
            got.placements.setdefault(job.key, np.full((layout.n_episodes, 2), np.nan))
            if job.is_copy:
                episodes, placed = copy_placements(job.runs[0])
                got.placements[job.key][episodes] = placed
        return got

    def add_data(self, task: int, results: list[DataResult], stats_path: str) -> None:
        """A data task's results; `stats_path` holds its episodes' stats if any of them has rows."""
        self.early[task] = (results, stats_path)
        while self.merged in self.early:
            results, stats_path = self.early.pop(self.merged)
            for r in results:
                merge_all(self.summaries, r.summaries)
                self.files.append(r.path)
            if any(r.episodes for r in results):
                self.stats_files.append(stats_path)
            self.merged += 1

    def add_video(self, result: VideoResult) -> None:
        """A video task's result: its episodes' placements, camera stats, and how it was written."""
        self.placements[result.key][result.episodes] = result.placements
        for ep, stats in result.stats.items():
            self.video_stats.setdefault(ep, {})[result.key] = stats
        if result.histogram is not None:
            self.histograms[result.key] = self.histograms.get(result.key, 0) + result.histogram
        self.reencoded.update(result.reencoded)
        self.copied += result.copied
        self.files.append(result.path)
