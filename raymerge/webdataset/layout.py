"""Where work and samples go: scan batches, blend order and its chunks, range groups for sorting, output
shards, Energon splits. Plain values only: the plan turns these into tasks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raymerge import ordering
from raymerge.webdataset.keytable import ORDINAL_BITS
from raymerge.webdataset.sources import Shard

BLEND_CHUNK = 65_536  # blended samples gathered per task
SCAN_BATCH_MAX = 32  # shards per scan task: small enough that the last tasks finish together


@dataclass
class OutputShard:
    """One output tar: its global position and which rows of which ordered chunks it holds."""

    index: int
    name: str
    start: int
    count: int = 0
    nbytes: int = 0
    pieces: list[tuple[int, int, int]] = field(default_factory=list)  # (chunk, first row, end row)


@dataclass(frozen=True)
class PackState:
    """Where shard packing stands after some chunks: what the next chunk's packing continues from."""

    shards: int = 0  # shards opened so far
    count: int = 0  # samples in the last one
    nbytes: int = 0  # its payload bytes
    full: bool = True  # the last one takes no more samples
    total: int = 0  # samples packed so far


def pack_chunk(
    chunk: int, nbytes: np.ndarray, state: PackState, maxcount: int, maxsize: int
) -> tuple[list[tuple[int, int, int, int, int]], PackState]:
    """The next ordered chunk cut into shard pieces (shard, chunk, first row, end row, payload bytes), packing
    on from `state`: at most `maxcount` samples and `maxsize` payload bytes per shard; a sample larger than
    `maxsize` gets a shard of its own rather than failing."""
    cum = np.concatenate([[0], np.cumsum(nbytes, dtype=np.int64)])
    row, n = 0, len(nbytes)
    shards, count, size, full, total = state.shards, state.count, state.nbytes, state.full, state.total
    pieces: list[tuple[int, int, int, int, int]] = []
    while row < n:
        if full:
            shards, count, size, full = shards + 1, 0, 0, False
        limit = cum[row] + (maxsize - size)
        end = min(row + maxcount - count, int(np.searchsorted(cum, limit, side="right")) - 1, n)
        if end <= row:
            if count:  # the next sample does not fit: roll over
                full = True
                continue
            end = row + 1
        pieces.append((shards - 1, chunk, row, end, int(cum[end] - cum[row])))
        count, size, total = count + end - row, size + int(cum[end] - cum[row]), total + end - row
        full = count >= maxcount or size >= maxsize
        row = end
    return pieces, PackState(shards, count, size, full, total)


class ShardPacker:
    """Cuts the ordered sample stream into shards of at most `maxcount` samples and `maxsize` payload bytes.

    Fed one chunk at a time: by its samples' sizes (`add_chunk`), or by the pieces a task packed
    (`pack_chunk`, `add_pieces`), so the driver never holds the whole stream, and with the pieces
    never a per-sample value at all.
    """

    def __init__(self, maxcount: int, maxsize: int, pattern: str) -> None:
        self.maxcount, self.maxsize, self.pattern = maxcount, maxsize, pattern
        self.shards: list[OutputShard] = []
        self.state = PackState()

    @property
    def total(self) -> int:
        return self.state.total

    def add_chunk(self, chunk: int, nbytes: np.ndarray) -> None:
        """The next ordered chunk, by the payload bytes of each of its samples."""
        pieces, self.state = pack_chunk(chunk, nbytes, self.state, self.maxcount, self.maxsize)
        self.add_pieces(pieces)

    def add_pieces(self, pieces: Sequence[tuple[int, int, int, int, int]]) -> None:
        """The pieces of the next ordered chunk, as `pack_chunk` cut them."""
        for shard, chunk, a, b, nbytes in pieces:
            if shard == len(self.shards):
                start = self.shards[-1].start + self.shards[-1].count if self.shards else 0
                self.shards.append(OutputShard(index=shard, name=self.pattern % shard, start=start))
            cur = self.shards[shard]
            cur.pieces.append((chunk, a, b))
            cur.count += b - a
            cur.nbytes += nbytes


def scan_batches(shards: Sequence[Shard], tasks: int, most: int = SCAN_BATCH_MAX) -> list[tuple[int, int]]:
    """(first, end) runs of consecutive shards of one input: about `tasks` runs, at most `most` shards each.

    Several shards per scan task: a shard's scan takes milliseconds, so a task per shard would be
    mostly task overhead and many tiny objects.
    """
    per = max(1, min(most, -(-len(shards) // max(1, tasks))))
    out, start = [], 0
    for i in range(1, len(shards) + 1):
        if i == len(shards) or i - start >= per or shards[i].input != shards[start].input:
            out.append((start, i))
            start = i
    return out


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
    """(input, index within input) of every blended sample: Hugging Face `interleave_datasets` with the
    weights as probabilities. The index keeps counting past an input's length when `all_exhausted` repeats
    it (take it modulo the length)."""
    p = None if weights is None else (np.asarray(weights, dtype=np.float64) / float(np.sum(weights))).tolist()
    src = ordering.interleave_order(lengths, p, seed, strategy).astype(np.int32)
    return src, ordering.appearance_rank(src, len(lengths))


@dataclass(frozen=True)
class BlendChunk:
    """One gather task's share of the blended order, and the inputs' key tables it needs."""

    first: int  # position of its first sample in the blended order
    inputs: np.ndarray  # per sample: the input it comes from
    rows: np.ndarray  # per sample: its row within that input
    sources: list[tuple[int, int, int]]  # (input, row of its first table's first sample, tables passed)
    tables: list[Any]  # the key tables (handles) of `sources`, in that order


def blend_chunks(
    inputs: np.ndarray, rows: np.ndarray, lengths: Sequence[int], tables: Sequence[Sequence[tuple[int, int, Any]]]
) -> Iterator[BlendChunk]:
    """The blended order (`blend_indices`) cut into chunks of `BLEND_CHUNK` samples, each with only the key
    tables it overlaps; `tables[input]` lists (first row, rows, table) of that input's tables in order."""
    rows = rows % np.asarray(lengths, dtype=np.int64)[inputs]
    for first in range(0, len(inputs), BLEND_CHUNK):
        chunk_inputs, chunk_rows = inputs[first : first + BLEND_CHUNK], rows[first : first + BLEND_CHUNK]
        sources: list[tuple[int, int, int]] = []
        needed: list[Any] = []
        for s in np.unique(chunk_inputs).tolist():
            need = chunk_rows[chunk_inputs == s]
            lo, hi = int(need.min()), int(need.max())
            overlap = [(start, table) for start, n, table in tables[s] if start <= hi and start + n > lo]
            sources.append((s, overlap[0][0], len(overlap)))
            needed.extend(table for _, table in overlap)
        yield BlendChunk(first, chunk_inputs, chunk_rows, sources, needed)


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
