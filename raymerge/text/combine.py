"""The output order of a text merge, and the blocks it is cut into.

The order (`raymerge.ordering`) is one small array, the source of each output row; cutting it into
blocks, each of which needs one contiguous (wrapping) range of rows per source, lets tasks assemble
the output in parallel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from raymerge.ordering import concat_order, interleave_order
from raymerge.text.config import Config


def output_order(cfg: Config, lengths: Sequence[int]) -> np.ndarray:
    """The source of each output row, as HF's concatenate/interleave would order sources of these lengths."""
    if cfg.operation == "concat":
        return concat_order(lengths)
    c = cfg.combine
    return interleave_order(lengths, c.probabilities, c.seed, c.stopping_strategy, cfg.input_names())


@dataclass(frozen=True)
class Block:
    """Output rows [start, stop): per source, `first[s]` is its appearance number at `start`."""

    start: int
    stop: int
    first: tuple[int, ...]
    count: tuple[int, ...]


def plan_blocks(order: np.ndarray, n_sources: int, block_rows: int) -> list[Block]:
    """Cut the output into blocks that tasks assemble in parallel; each needs `count[s]` rows of source s from
    appearance `first[s]`."""
    blocks = []
    seen = np.zeros(n_sources, np.int64)
    for start in range(0, len(order), block_rows):
        stop = min(start + block_rows, len(order))
        counts = np.bincount(order[start:stop].astype(np.int64), minlength=n_sources)
        blocks.append(Block(start, stop, tuple(int(x) for x in seen), tuple(int(x) for x in counts)))
        seen += counts
    return blocks
