"""The order Hugging Face `datasets` 5.2 gives `concatenate_datasets` and `interleave_datasets`, vectorised.

The one implementation of these rules in raymerge: the text family's concat/interleave and the WebDataset
blend both use it. An order is one small array: the source of each output row. The k-th appearance of
source s is its row `k % length[s]` (rows wrap only under `all_exhausted`), which is exactly HF's index list.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from raymerge.errors import InvalidInput

STRATEGIES = ("first_exhausted", "all_exhausted", "all_exhausted_without_replacement")

_DRAW_BATCH = 1000  # HF draws sources in batches of 1000 from one default_rng(seed) stream


def source_dtype(n_sources: int) -> np.dtype:
    return np.dtype(np.int8 if n_sources < 128 else np.int16 if n_sources < 32768 else np.int32)


def concat_order(lengths: Sequence[int]) -> np.ndarray:
    return np.repeat(np.arange(len(lengths), dtype=source_dtype(len(lengths))), lengths)


def interleave_order(
    lengths: Sequence[int],
    probabilities: Sequence[float] | None,
    seed: int | None,
    stopping_strategy: str,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """The source of each output row of `interleave_datasets(...)` on sources of these lengths."""
    lens = np.asarray(lengths, dtype=np.int64)
    names = list(names or [f"input {i}" for i in range(len(lens))])
    dtype = source_dtype(len(lens))
    if probabilities is None:
        return _round_robin(lens, stopping_strategy, names).astype(dtype)
    p = np.asarray(probabilities, dtype=np.float64)
    drawable = p > 0
    empty = [names[i] for i in np.flatnonzero(drawable & (lens == 0))]
    if empty:
        raise InvalidInput(f"interleave: input(s) {', '.join(empty)} have no rows but a probability above 0")
    if stopping_strategy != "first_exhausted" and not drawable.all():
        never = [names[i] for i in np.flatnonzero(~drawable & (lens > 0))]
        if never:
            raise InvalidInput(
                f"interleave: stopping_strategy {stopping_strategy} can never exhaust input(s) "
                f"{', '.join(never)} whose probability is 0"
            )
    if not drawable.any():
        return np.zeros(0, dtype)
    draws = _draws_until(lens, p, seed, drawable, every=stopping_strategy != "first_exhausted")
    rank = appearance_rank(draws, len(lens))
    # HF stops right after the draw that uses a source's last row: the first such draw for
    # first_exhausted, the last source to get there otherwise.
    last_row = np.flatnonzero(rank == lens[draws] - 1)
    exhausted_at = np.full(len(lens), np.iinfo(np.int64).max, np.int64)
    np.minimum.at(exhausted_at, draws[last_row], last_row)
    if stopping_strategy == "first_exhausted":
        stop = exhausted_at[drawable].min()
        return draws[: stop + 1].astype(dtype)
    stop = exhausted_at[drawable].max()
    used = draws[: stop + 1]
    if stopping_strategy == "all_exhausted":
        return used.astype(dtype)
    # without replacement: draws of an already exhausted source are skipped
    return used[rank[: stop + 1] < lens[used]].astype(dtype)


def _round_robin(lens: np.ndarray, strategy: str, names: list[str]) -> np.ndarray:
    n = len(lens)
    if strategy == "first_exhausted":
        return np.tile(np.arange(n), int(lens.min()))
    if strategy == "all_exhausted":
        if (lens == 0).any():
            empty = [names[i] for i in np.flatnonzero(lens == 0)]
            raise InvalidInput(f"interleave: all_exhausted cannot cycle input(s) {', '.join(empty)} with no rows")
        return np.tile(np.arange(n), int(lens.max()))
    grid = np.tile(np.arange(n), (int(lens.max()), 1))
    live = np.arange(int(lens.max()))[:, None] < lens[None, :]
    return grid[live]


def _draws_until(lens: np.ndarray, p: np.ndarray, seed: int | None, drawable: np.ndarray, every: bool) -> np.ndarray:
    """HF's stream of drawn sources, long enough for the stopping condition to be decided."""
    rng = np.random.default_rng(seed)
    blocks: list[np.ndarray] = []
    counts = np.zeros(len(lens), np.int64)
    while True:
        reached = (counts >= lens)[drawable]
        if reached.all() if every else reached.any():
            return np.concatenate(blocks)
        # Grow geometrically: the same stream, fewer Python iterations (batches are still 1000 draws each).
        need = max(1, len(blocks))
        for _ in range(need):
            block = rng.choice(len(lens), size=_DRAW_BATCH, p=p)
            blocks.append(block)
            counts += np.bincount(block, minlength=len(lens))


def appearance_rank(order: np.ndarray, n_sources: int) -> np.ndarray:
    """For each position, how many earlier positions hold the same source."""
    idx = np.argsort(order, kind="stable")
    counts = np.bincount(order, minlength=n_sources)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(order), np.int64)
    rank[idx] = np.arange(len(order)) - np.repeat(starts, counts)
    return rank


def hf_indices(order: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
    """The row indices into the concatenated sources that HF's `.select()` would use."""
    lens = np.asarray(lengths, np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)[:-1]])
    o = order.astype(np.int64)
    return offsets[o] + appearance_rank(o, len(lens)) % np.maximum(lens[o], 1)
