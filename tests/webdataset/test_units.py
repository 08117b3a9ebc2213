"""Plain-value logic without a cluster: key splitting, blend order, shard packing, splits."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset, interleave_datasets

from raymerge.webdataset.layout import ShardPacker, blend_indices, split_parts
from raymerge.webdataset.tarindex import split_name


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("a/b.seg.png", ("a/b", "seg.png")),
        ("x.y/000123.jpg", ("x.y/000123", "jpg")),
        ("README", None),
        (".hidden", None),
    ],
)
def test_split_name_matches_energon(name, parts):
    assert split_name(name) == parts


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


def test_split_parts_by_whole_shards():
    names = [f"s{i}" for i in range(10)]
    assert split_parts(names, None) == {"train": names}
    assert split_parts(names, {"train": 0.8, "val": 0.1, "test": 0.1}) == {
        "train": names[:8],
        "val": names[8:9],
        "test": names[9:],
    }
