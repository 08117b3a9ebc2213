"""Output blocks of a text merge: each needs one contiguous (wrapping) range of rows per source.

The order itself (`raymerge.ordering`) is one small array; cutting it into blocks lets tasks assemble
the output in parallel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Block:
    """Output rows [start, stop): per source, `first[s]` is its appearance number at `start`."""

    start: int
    stop: int
    first: tuple[int, ...]
    count: tuple[int, ...]


def plan_blocks(order: np.ndarray, n_sources: int, block_rows: int) -> list[Block]:
    """Cut the output into blocks; each needs `count[s]` rows of source s from appearance `first[s]`."""
    blocks = []
    seen = np.zeros(n_sources, np.int64)
    for start in range(0, len(order), block_rows):
        stop = min(start + block_rows, len(order))
        counts = np.bincount(order[start:stop].astype(np.int64), minlength=n_sources)
        blocks.append(Block(start, stop, tuple(int(x) for x in seen), tuple(int(x) for x in counts)))
        seen += counts
    return blocks
