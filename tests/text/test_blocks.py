"""Block assembly: blocks of the Hugging Face order put together from the scan tasks' chunks."""

from __future__ import annotations

import pyarrow as pa
import pytest
from datasets import Dataset, interleave_datasets

from raymerge.ordering import STRATEGIES, interleave_order
from raymerge.text.blocks import SourceSlice, assemble_block, chunks_for
from raymerge.text.combine import plan_blocks


def _datasets(lengths):
    return [Dataset.from_dict({"v": [f"{i}:{j}" for j in range(n)]}) for i, n in enumerate(lengths)]


def _source_tables(lengths, chunk_rows):
    """Each source as pair tables cut into chunks, like the scan tasks leave them."""
    sources = []
    for s, n in enumerate(lengths):
        rows = pa.table({"input": [f"{s}:{j}" for j in range(n)], "output": [f"o{s}:{j}" for j in range(n)]})
        starts = list(range(0, n, chunk_rows))
        sources.append((starts, [rows.slice(a, chunk_rows) for a in starts]))
    return sources


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_blocks_assemble_the_hf_order(strategy):
    lengths, probabilities, seed = [37, 5, 60], [0.3, 0.3, 0.4], 11
    order = interleave_order(lengths, probabilities, seed, strategy)
    sources = _source_tables(lengths, 8)
    got = []
    for b in plan_blocks(order, len(lengths), 16):
        slices, tables = [], []
        for s, (starts, chunks) in enumerate(sources):
            picked = chunks_for(b.first[s], b.count[s], lengths[s], starts)
            slices.append(SourceSlice(s, b.first[s], b.count[s], lengths[s], tuple(starts[i] for i in picked)))
            tables += [chunks[i] for i in picked]
        got += assemble_block(order[b.start : b.stop], slices, tables)["input"].to_pylist()
    hf = interleave_datasets(_datasets(lengths), probabilities=probabilities, seed=seed, stopping_strategy=strategy)
    assert got == hf["v"]


def test_chunks_for_picks_only_the_needed_chunks():
    starts = [0, 10, 20, 30]
    assert chunks_for(12, 5, 40, starts) == [1]
    assert chunks_for(35, 10, 40, starts) == [0, 3]  # wraps past the end
    assert chunks_for(3, 80, 40, starts) == [0, 1, 2, 3]
    assert chunks_for(0, 0, 40, starts) == []
