"""Write task results gathered on the driver: the same stats whatever order the tasks finish in."""

from __future__ import annotations

import numpy as np

from raymerge.lerobot.data import DataResult
from raymerge.lerobot.results import TaskResults
from raymerge.lerobot.stats.summary import Summary


def test_data_results_merge_in_task_order_whatever_order_they_arrive():
    """stats.json must not depend on which write task finished first, and the per-episode stats files must be
    read in episode order."""
    rng = np.random.default_rng(5)
    parts = [rng.normal(size=(n, 2)) ** 3 for n in (50, 3, 70, 11)]

    def result(i: int) -> DataResult:
        return DataResult(f"file-{i}", len(parts[i]), int(i != 1), {"x": Summary.of(parts[i])})

    in_order, shuffled = TaskResults(), TaskResults()
    for i in range(4):
        in_order.add_data(i, [result(i)], f"stats-{i}")
    for i in (2, 0, 3, 1):
        shuffled.add_data(i, [result(i)], f"stats-{i}")
    assert shuffled.files == in_order.files == ["file-0", "file-1", "file-2", "file-3"]
    assert shuffled.stats_files == in_order.stats_files == ["stats-0", "stats-2", "stats-3"]  # task 1: no episodes
    assert shuffled.summaries["x"].to_stats() == in_order.summaries["x"].to_stats()
    assert not shuffled.early
