"""Where each sample goes: blend order, range groups for sorting, output shards, Energon splits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from raymerge.webdataset.keytable import ORDINAL_BITS


@dataclass
class OutputShard:
    """One output tar: its global position and which rows of which ordered chunks it holds."""

    index: int
    name: str
    start: int
    count: int = 0
    nbytes: int = 0
    pieces: list[tuple[int, int, int]] = field(default_factory=list)  # (chunk, first row, end row)


class ShardPacker:
    """Cuts the ordered sample stream into shards of at most `maxcount` samples and `maxsize` payload bytes.

    Fed one chunk's sample sizes at a time, so the driver never holds the whole stream.
    A sample larger than `maxsize` gets a shard of its own rather than failing.
    """

    def __init__(self, maxcount: int, maxsize: int, pattern: str) -> None:
        self.maxcount, self.maxsize, self.pattern = maxcount, maxsize, pattern
        self.shards: list[OutputShard] = []
        self.total = 0
        self._full = True

    def add_chunk(self, chunk: int, nbytes: np.ndarray) -> None:
        cum = np.concatenate([[0], np.cumsum(nbytes, dtype=np.int64)])
        row, n = 0, len(nbytes)
        while row < n:
            cur = self.shards[-1] if self.shards else None
            if cur is None or self._full:
                cur = self._new_shard()
                self._full = False
            room = self.maxcount - cur.count
            limit = cum[row] + (self.maxsize - cur.nbytes)
            end = min(row + room, int(np.searchsorted(cum, limit, side="right")) - 1, n)
            if end <= row:
                if cur.count:  # the next sample does not fit: roll over
                    self._full = True
                    continue
                end = row + 1
            cur.pieces.append((chunk, row, end))
            cur.count += end - row
            cur.nbytes += int(cum[end] - cum[row])
            self.total += end - row
            self._full = cur.count >= self.maxcount or cur.nbytes >= self.maxsize
            row = end

    def _new_shard(self) -> OutputShard:
        i = len(self.shards)
        self.shards.append(OutputShard(index=i, name=self.pattern % i, start=self.total))
        return self.shards[-1]


def range_boundaries_by_shard(shard_counts: Sequence[int], groups: int) -> list[int]:
    """Order values that cut input-ordered rows into about `groups` runs of consecutive shards of similar size."""
    total = sum(shard_counts)
    target = max(1, -(-total // max(1, groups)))
    bounds, acc = [0], 0
    for shard, n in enumerate(shard_counts):
        if acc >= target:
            bounds.append(shard << ORDINAL_BITS)
            acc = 0
        acc += n
    return bounds


def range_boundaries_uniform(groups: int) -> list[int]:
    """Equal ranges of the non-negative int64 space (shuffled orders are uniform hashes)."""
    step = (1 << 63) // groups
    return [i * step for i in range(groups)]


def blend_indices(
    lengths: Sequence[int], weights: Sequence[float] | None, seed: int, strategy: str
) -> tuple[np.ndarray, np.ndarray]:
    """(input, index within input) of every blended sample, matching Hugging Face `interleave_datasets`.

    Same seed, weights and stopping strategy as `datasets` give the same order; the index keeps
    counting past an input's length when `all_exhausted` repeats it (take it modulo the length).
    """
    n = len(lengths)
    lens = np.asarray(lengths, dtype=np.int64)
    if weights is None:
        return _round_robin(lens, strategy)
    p = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    rng = np.random.default_rng(seed)
    if strategy == "all_exhausted_without_replacement":
        return _draw_without_replacement(lens, p, rng)
    blocks, counts = [], np.zeros(n, dtype=np.int64)
    while not ((counts >= lens).all() if strategy == "all_exhausted" else (counts >= lens).any()):
        block = rng.choice(n, size=1000, p=p)
        blocks.append(block)
        counts += np.bincount(block, minlength=n)
    draws = np.concatenate(blocks)
    exhaust = [int(np.flatnonzero(draws == s)[lens[s] - 1]) for s in range(n) if counts[s] >= lens[s]]
    used = draws[: (max(exhaust) if strategy == "all_exhausted" else min(exhaust)) + 1]
    return used.astype(np.int32), _running_index(used, n)


def _running_index(src: np.ndarray, n: int) -> np.ndarray:
    idx = np.empty(len(src), dtype=np.int64)
    for s in range(n):
        pos = np.flatnonzero(src == s)
        idx[pos] = np.arange(len(pos))
    return idx


def _round_robin(lens: np.ndarray, strategy: str) -> tuple[np.ndarray, np.ndarray]:
    n = len(lens)
    if strategy == "first_exhausted":
        rounds = int(lens.min())
    elif strategy == "all_exhausted":
        rounds = int(lens.max())
    else:
        grid_src = np.tile(np.arange(n, dtype=np.int32), int(lens.max()))
        grid_idx = np.repeat(np.arange(int(lens.max()), dtype=np.int64), n)
        keep = grid_idx < lens[grid_src]
        return grid_src[keep], grid_idx[keep]
    return np.tile(np.arange(n, dtype=np.int32), rounds), np.repeat(np.arange(rounds, dtype=np.int64), n)


def _draw_without_replacement(
    lens: np.ndarray, p: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draws for exhausted inputs are skipped; stops once every input has given all its samples."""
    n, total = len(lens), int(lens.sum())
    kept: list[np.ndarray] = []
    counts = np.zeros(n, dtype=np.int64)
    taken = 0
    while taken < total:
        block = rng.choice(n, size=1000, p=p)
        seen = counts.copy()
        ok = np.empty(len(block), dtype=bool)
        for s in range(n):
            pos = np.flatnonzero(block == s)
            ok[pos] = seen[s] + np.arange(len(pos)) < lens[s]
            counts[s] = min(lens[s], seen[s] + len(pos))
        block = block[ok][: total - taken]
        kept.append(block)
        taken += len(block)
    src = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    return src.astype(np.int32), _running_index(src, n)


def split_parts(shard_names: Sequence[str], ratio: dict[str, float] | None) -> dict[str, list[str]]:
    """Energon splits by whole shards, in shard order: cut points at int(n * cumulative ratio)."""
    if not ratio:
        return {"train": list(shard_names)}
    total = sum(ratio.values())
    out: dict[str, list[str]] = {}
    acc, start = 0.0, 0
    for name, r in ratio.items():
        acc += r / total
        end = len(shard_names) if name == list(ratio)[-1] else int(len(shard_names) * acc)
        out[name] = list(shard_names[start:end])
        start = end
    return out
