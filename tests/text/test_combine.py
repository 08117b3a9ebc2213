"""Output order against the real Hugging Face `datasets` library, and block assembly."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from datasets import Dataset, concatenate_datasets, interleave_datasets

from raymerge.errors import InvalidInput
from raymerge.text.blocks import SourceSlice, assemble_block, chunks_for
from raymerge.text.combine import concat_order, hf_indices, interleave_order, plan_blocks

STRATEGIES = ["first_exhausted", "all_exhausted", "all_exhausted_without_replacement"]


def _datasets(lengths):
    return [Dataset.from_dict({"v": [f"{i}:{j}" for j in range(n)]}) for i, n in enumerate(lengths)]


def _ours(lengths, order):
    flat = [f"{i}:{j}" for i, n in enumerate(lengths) for j in range(n)]
    return [flat[k] for k in hf_indices(order, lengths)]


def test_concat_matches_concatenate_datasets():
    lengths = [3, 0, 5, 2]
    assert _ours(lengths, concat_order(lengths)) == concatenate_datasets(_datasets(lengths))["v"]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(
    "lengths,probabilities,seed",
    [
        ([3, 4, 5], None, None),
        ([7, 1, 4, 4], None, None),
        ([3, 4, 5], [0.2, 0.3, 0.5], 42),
        ([1500, 40, 2600], [0.7, 0.1, 0.2], 0),
        ([900, 1200], [0.5, 0.5], 7),
        ([5, 300, 20], [0.05, 0.9, 0.05], 123),
    ],
)
def test_interleave_matches_interleave_datasets(strategy, lengths, probabilities, seed):
    hf = interleave_datasets(_datasets(lengths), probabilities=probabilities, seed=seed, stopping_strategy=strategy)
    order = interleave_order(lengths, probabilities, seed, strategy)
    assert _ours(lengths, order) == hf["v"]


def test_interleave_with_zero_probability_source_matches_hf():
    lengths = [50, 60, 70]
    probabilities = [0.5, 0.0, 0.5]
    hf = interleave_datasets(_datasets(lengths), probabilities=probabilities, seed=3)
    assert _ours(lengths, interleave_order(lengths, probabilities, 3, "first_exhausted")) == hf["v"]


def test_interleave_refuses_what_hf_cannot_finish():
    with pytest.raises(InvalidInput, match=r"can never exhaust input\(s\) b whose probability is 0"):
        interleave_order([3, 4], [1.0, 0.0], 0, "all_exhausted", ["a", "b"])
    with pytest.raises(InvalidInput, match=r"b have no rows"):
        interleave_order([3, 0], [0.5, 0.5], 0, "first_exhausted", ["a", "b"])
    with pytest.raises(InvalidInput, match=r"cannot cycle input\(s\) b"):
        interleave_order([3, 0], None, 0, "all_exhausted", ["a", "b"])


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


def test_order_dtype_is_small():
    assert interleave_order([1000, 1000], None, None, "first_exhausted").dtype == np.int8
