"""Target files from block parts: their bytes do not depend on how the output was cut into blocks, which
varies with the cores a run has."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from raymerge import storage
from raymerge.text import sinks
from raymerge.text.samples import pairs


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_a_file_is_the_same_however_the_output_was_cut(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(sinks, "PARQUET_ROW_GROUP_ROWS", 10)
    table = pairs("cut", 45)
    fs, root = storage.resolve(str(tmp_path))
    kind = sinks.PART_KIND[fmt]
    written = []
    for block_rows in (45, 7, 10, 16):
        part_dir = storage.join(root, f"parts-{block_rows}")
        fs.makedirs(part_dir)
        starts = range(0, table.num_rows, block_rows)
        for i, start in enumerate(starts):
            sinks.write_parts(table.slice(start, block_rows), fs, part_dir, i, [kind])
        out = storage.join(root, f"{block_rows}.{fmt}")
        sinks.assemble(fmt, fs, [sinks.part_path(part_dir, kind, i) for i in range(len(starts))], fs, out)
        written.append(fs.cat_file(out))
    assert written == written[:1] * 4
    if fmt == "parquet":
        assert pq.ParquetFile(out).metadata.num_row_groups == 5
        assert pq.read_table(out).equals(table)
