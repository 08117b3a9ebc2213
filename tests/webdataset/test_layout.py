"""Where work and samples go, without a cluster: scan batches, blend order and its chunks, shard packing, splits."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset, interleave_datasets

from raymerge.webdataset.layout import (
    BLEND_CHUNK,
    PackState,
    ShardPacker,
    blend_chunks,
    blend_indices,
    pack_chunk,
    scan_batches,
    split_parts,
)
from raymerge.webdataset.sources import Shard


@pytest.mark.parametrize("weights", [None, [0.2, 0.5, 0.3]])
@pytest.mark.parametrize("strategy", ["first_exhausted", "all_exhausted", "all_exhausted_without_replacement"])
def test_blend_indices_equal_hugging_face(weights, strategy):
    lengths = [13, 40, 7]
    sets = [Dataset.from_dict({"s": [i] * n, "i": list(range(n))}) for i, n in enumerate(lengths)]
    hf = interleave_datasets(sets, probabilities=weights, seed=5, stopping_strategy=strategy)
    src, idx = blend_indices(lengths, weights, 5, strategy)
    assert src.tolist() == hf["s"]
    assert (idx % np.asarray(lengths)[src]).tolist() == hf["i"]


def test_packer_rolls_over_across_chunks_and_keeps_oversized_samples_alone():
    p = ShardPacker(maxcount=3, maxsize=100, pattern="s-%02d.tar")
    p.add_chunk(0, np.array([10, 10, 10, 10, 95, 200, 5]))
    p.add_chunk(1, np.array([5, 5]))
    assert [(s.name, s.start, s.count, s.nbytes, s.pieces) for s in p.shards] == [
        ("s-00.tar", 0, 3, 30, [(0, 0, 3)]),
        ("s-01.tar", 3, 1, 10, [(0, 3, 4)]),
        ("s-02.tar", 4, 1, 95, [(0, 4, 5)]),
        ("s-03.tar", 5, 1, 200, [(0, 5, 6)]),
        ("s-04.tar", 6, 3, 15, [(0, 6, 7), (1, 0, 2)]),
    ]


@pytest.mark.parametrize("seed", range(5))
def test_packing_in_tasks_cuts_the_same_shards_as_the_driver(seed):
    """Each chunk packed on its own from the state the previous one left (as the chained tasks do) gives the
    shards that one packer fed every sample size gives."""
    rng = np.random.default_rng(seed)
    chunks = [rng.integers(0, 120, size=rng.integers(0, 40)) for _ in range(6)]
    whole = ShardPacker(maxcount=7, maxsize=300, pattern="s-%03d.tar")
    pieces_of = ShardPacker(maxcount=7, maxsize=300, pattern="s-%03d.tar")
    state = PackState()
    for c, sizes in enumerate(chunks):
        whole.add_chunk(c, sizes)
        pieces, state = pack_chunk(c, sizes, state, 7, 300)
        pieces_of.add_pieces(pieces)
    assert [vars(s) for s in pieces_of.shards] == [vars(s) for s in whole.shards]
    assert state.total == sum(len(c) for c in chunks)


def test_split_parts_by_whole_shards():
    names = [f"s{i}" for i in range(10)]
    assert split_parts(names, None) == {"train": names}
    assert split_parts(names, {"train": 0.8, "val": 0.1, "test": 0.1}) == {
        "train": names[:8],
        "val": names[8:9],
        "test": names[9:],
    }


def test_scan_batches_keep_to_one_input_and_spread_over_the_tasks():
    shards = [Shard(i, f"/s{j}", f"s{j}", 1, False) for j, i in enumerate([0] * 7 + [1] * 3)]
    assert scan_batches(shards, 4) == [(0, 3), (3, 6), (6, 7), (7, 10)]
    assert scan_batches(shards, 100) == [(i, i + 1) for i in range(10)]
    assert scan_batches(shards, 1, most=4) == [(0, 4), (4, 7), (7, 10)]


def test_blend_chunks_take_only_the_tables_they_overlap():
    """Input 0 in tables of 100 rows; input 1 repeats (rows past its length wrap round)."""
    lengths = [BLEND_CHUNK * 2, 50]
    inputs = np.r_[np.zeros(BLEND_CHUNK, np.int32), np.ones(10, np.int32), np.zeros(5, np.int32)]
    rows = np.r_[np.arange(BLEND_CHUNK), np.arange(45, 55), np.arange(BLEND_CHUNK, BLEND_CHUNK + 5)]
    tables = [[(start, 100, f"a{start // 100}") for start in range(0, lengths[0], 100)], [(0, 50, "b")]]
    first, second = blend_chunks(inputs, rows, lengths, tables)
    assert (first.first, first.sources) == (0, [(0, 0, -(-BLEND_CHUNK // 100))])
    assert first.tables == [f"a{i}" for i in range(-(-BLEND_CHUNK // 100))]
    start = BLEND_CHUNK // 100 * 100
    assert (second.first, second.sources, second.tables) == (
        BLEND_CHUNK,
        [(0, start, 1), (1, 0, 1)],
        [f"a{start // 100}", "b"],
    )
    assert second.rows.tolist() == [*range(45, 50), *range(5), *range(BLEND_CHUNK, BLEND_CHUNK + 5)]
