"""Re-indexing one episode's rows of a data table, sliced when its episodes are contiguous, filtered otherwise."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raymerge.lerobot.data import episode_slices, reindex


def test_reindex_slices_contiguous_episodes_and_filters_scattered_ones():
    def table(eps: list[int]) -> pa.Table:
        n = len(eps)
        return pa.table({"episode_index": eps, "index": list(range(n)), "task_index": [e % 2 for e in eps]})

    contiguous, scattered = table([4, 4, 7, 7, 7]), table([4, 7, 4, 7, 7])
    assert episode_slices(contiguous) == {4: (0, 2), 7: (2, 3)}
    assert episode_slices(scattered) == {}
    task_map = np.array([1, 0])
    for t in (contiguous, scattered):
        got = reindex(t, 7, 2, 100, task_map, episode_slices(t))
        assert got["episode_index"].to_pylist() == [2, 2, 2]
        assert got["index"].to_pylist() == [100, 101, 102]
        assert got["task_index"].to_pylist() == [0, 0, 0]
