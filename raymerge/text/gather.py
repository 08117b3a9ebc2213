"""Gathering output blocks straight from the sources: the write half of a text merge's two passes.

The plan keeps no rows, only each chunk's count of normalised rows. A run is a few consecutive output blocks
gathered by one task: for each block it reads the chunks holding the rows the block needs (`blocks.chunks_for`),
normalises them with the scan's own code (`tasks.scan_chunk`), and assembles the block in HF's order. A run
holds at most `HELD_PER_SOURCE` normalised chunks per source: the blocks of a run read each source forward, so
a chunk is read once per pass over it and again only where runs meet, and memory does not grow with the data.

Small sources are the exception (`plan.HOLD_BELOW_BYTES`): their scan keeps their rows with the executor, and a
run is given the chunks of them it needs (`Run.given`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from fsspec import AbstractFileSystem

from raymerge.text.blocks import SourceSlice, assemble_block, chunks_for
from raymerge.text.combine import Block
from raymerge.text.features import conform
from raymerge.text.scan import ScanSpec, scan_chunk
from raymerge.text.sources import Chunk

HELD_PER_SOURCE = 2  # the chunk a block ended in, and chunk 0 when a source wraps round


@dataclass(frozen=True)
class SourceRows:
    """Where a source's normalised rows are read again: its chunks, how to read them (`spec`, a `ScanSpec`
    without hashes), and the normalised row each chunk starts at (from the counting pass)."""

    fs: AbstractFileSystem
    where: str
    spec: ScanSpec
    chunks: tuple[Chunk, ...]
    starts: tuple[int, ...]
    rows: int


@dataclass(frozen=True)
class BlockRows:
    """One output block: its number, its slice of the order and of the dedup mask, and per source the
    appearance it starts at and how many rows it takes (`combine.Block`)."""

    index: int
    order: np.ndarray
    keep: np.ndarray | None
    first: tuple[int, ...]
    count: tuple[int, ...]


@dataclass(frozen=True)
class Run:
    """Consecutive output blocks that one task gathers, and the sources they read."""

    blocks: tuple[BlockRows, ...]
    sources: tuple[SourceRows, ...]
    schema: pa.Schema
    given: tuple[tuple[int, int], ...] = ()  # (source, chunk) of each table handed to the run's task


def cut_runs(
    blocks: list[Block],
    order: np.ndarray,
    keep: np.ndarray | None,
    sources: tuple[SourceRows, ...],
    schema: pa.Schema,
    count: int,
    held: Sequence[bool] = (),
) -> list[Run]:
    """The blocks cut into `count` runs of consecutive blocks (fewer when there are fewer blocks); a run names
    the chunks of the `held` sources it needs, which its task is then given."""
    described = [
        BlockRows(i, order[b.start : b.stop], None if keep is None else keep[b.start : b.stop], b.first, b.count)
        for i, b in enumerate(blocks)
    ]
    bounds = np.linspace(0, len(described), min(count, len(described)) + 1).round().astype(int)
    out = []
    for a, b in itertools.pairwise(bounds):
        part = tuple(described[a:b])
        given = sorted(
            {(s, k) for blk in part for s, src in enumerate(sources) if held and held[s] for k in _picked(blk, s, src)}
        )
        out.append(Run(part, sources, schema, tuple(given)))
    return out


def _picked(b: BlockRows, s: int, src: SourceRows) -> list[int]:
    return chunks_for(b.first[s], b.count[s], src.rows, src.starts)


class _Held:
    """The last normalised chunks read of each source."""

    def __init__(self, run: Run, given: Sequence[pa.Table]) -> None:
        self.run = run
        self.given = dict(zip(run.given, given, strict=True))
        self.tables: list[dict[int, pa.Table]] = [{} for _ in run.sources]

    def table(self, s: int, k: int) -> pa.Table:
        if (s, k) in self.given:
            return conform(self.given[s, k], self.run.schema)
        held = self.tables[s]
        if k not in held:
            src = self.run.sources[s]
            if len(held) >= HELD_PER_SOURCE:
                del held[next(iter(held))]
            held[k] = conform(scan_chunk(src.fs, src.chunks[k], src.where, src.spec)[1], self.run.schema)
        return held[k]


def gather(run: Run, given: Sequence[pa.Table] = ()) -> Iterator[tuple[int, pa.Table]]:
    """(block number, rows) of each block of the run, in order, each made as soon as the one before is used;
    `given`: the tables of `run.given`."""
    held = _Held(run, given)
    for b in run.blocks:
        slices, tables = [], []
        for s, src in enumerate(run.sources):
            picked = _picked(b, s, src)
            slices.append(SourceSlice(s, b.first[s], b.count[s], src.rows, tuple(src.starts[k] for k in picked)))
            tables += [held.table(s, k) for k in picked]
        table = assemble_block(b.order, slices, tables, run.schema)
        yield b.index, table if b.keep is None else table.filter(b.keep)
