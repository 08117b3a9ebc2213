"""The Hugging Face order rules (`raymerge.ordering`) against the real `datasets` library: one grid for every
strategy, seed and probability case, used by the text interleave and the WebDataset blend alike."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset, concatenate_datasets, interleave_datasets

from raymerge.errors import InvalidInput
from raymerge.ordering import STRATEGIES, concat_order, hf_indices, interleave_order


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
        ([13, 40, 7], [0.2, 0.5, 0.3], 5),
        ([13, 40, 7], None, 5),
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


def test_order_dtype_is_small():
    assert interleave_order([1000, 1000], None, None, "first_exhausted").dtype == np.int8
