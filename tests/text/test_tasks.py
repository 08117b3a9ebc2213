"""Task bodies called directly: a scan returns pairs for the executor and only counts and hashes for the driver."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raymerge import storage
from raymerge.text.scan import ScanSpec, scan_chunk
from raymerge.text.sources import Chunk


def test_scan_counts_drops_and_hashes_pairs(tmp_path):
    path = tmp_path / "p.parquet"
    table = pa.table({"prompt": [" a ", "b", "", "a"], "completion": ["x", "y", "z", "x"], "ids": [[1], [2], [3], [4]]})
    pq.write_table(table, path)
    fs, p = storage.resolve(str(path))
    stats, pairs = scan_chunk(fs, Chunk("parquet", p, 0, 1), p, ScanSpec(hashes=True))
    assert pairs.to_pylist() == [
        {"input": "a", "output": "x"},
        {"input": "b", "output": "y"},
        {"input": "a", "output": "x"},
    ]
    assert (stats.rows_in, stats.rows, stats.mapping) == (4, 3, "prompt -> completion")
    assert stats.dropped == {"empty input or output": 1}
    assert stats.hashes is not None and stats.hashes.shape == (3, 2)
    assert np.array_equal(stats.hashes[0], stats.hashes[2]) and not np.array_equal(stats.hashes[0], stats.hashes[1])
