"""An output's per-episode stats on the driver, a chunk of episodes at a time: numeric stats read back from
the data tasks' scratch files, camera stats taken from the sources' Arrow tables (or from the decoded
videos), and each camera's stats pooled over the whole output on the way. One chunk is alive at a time, so
the driver's memory does not grow with the number of episodes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
from fsspec import AbstractFileSystem

from raymerge.lerobot.arrays import runs
from raymerge.lerobot.stats import per_episode
from raymerge.lerobot.stats.columns import NO_CAMERA_STATS, flat_stats, is_stat_of, stat_of
from raymerge.lerobot.stats.summary import MOMENTS, QUANTILES, Summary, column_values

Columns = dict[str, pa.Array | pa.ChunkedArray]


def ranges(n: int, size: int) -> list[tuple[int, int]]:
    """Consecutive [a, b) covering n episodes, `size` at most each (one empty range for none)."""
    return [(a, min(a + size, n)) for a in range(0, n, size)] or [(0, 0)]


def aligned_stats(record_batches: Iterable[pa.RecordBatch], spans: list[tuple[int, int]]) -> Iterator[pa.Table | None]:
    """The per-episode stats for each span of episodes in turn, a row per episode (null for an episode
    without rows), from batches of rows in episode order; None for every span if there are none."""
    it = iter(record_batches)
    carry = next(it, None)
    schema = carry.schema if carry is not None else None
    for a, b in spans:
        parts = []
        while carry is not None:
            k = int(np.searchsorted(carry.column("episode_index").to_numpy(), b))
            if k:
                parts.append(carry.slice(0, k))
            if k < carry.num_rows:
                carry = carry.slice(k)
                break
            carry = next(it, None)
        yield None if schema is None else _align(pa.Table.from_batches(parts, schema), a, b)
    if carry is not None:
        raise AssertionError(f"episode stats past the last episode: {carry.column('episode_index')[:10]}")


def _align(table: pa.Table, a: int, b: int) -> pa.Table:
    """Rows of episodes a..b-1 (some missing) as exactly b - a rows, null where an episode has none."""
    at = table["episode_index"].to_numpy() - a
    if len(at) and (at[0] < 0 or (np.diff(at) <= 0).any()):
        raise AssertionError(f"episode stats out of order: {table['episode_index'][:10]} for episodes {a}..{b - 1}")
    table = table.drop_columns(["episode_index"])
    if len(at) == b - a:
        return table
    rows = np.full(b - a, -1)
    rows[at] = np.arange(len(at))
    return table.take(pa.array(rows, mask=rows < 0))


class StoredCameraStats:
    """The sources' stored image/video stats for runs of output episodes, taken from their Arrow tables
    (never Python objects), in one schema for every chunk."""

    def __init__(self, tables: dict[int, pa.Table], source: np.ndarray, row: np.ndarray) -> None:
        """`tables` by source position; output episode i is row `row[i]` of source `source[i]`."""
        self.tables, self.source, self.row = tables, source, row
        found, first = np.unique(source, return_index=True)
        schemas = [tables[p].schema for p in found[np.argsort(first)].tolist()]  # in order of appearance
        self.schema = pa.unify_schemas(schemas, promote_options="permissive") if schemas else NO_CAMERA_STATS

    def take(self, a: int, b: int) -> pa.Table:
        """The stats of output episodes a..b-1."""
        source, row = self.source[a:b], self.row[a:b]
        parts = [self.tables[int(source[i])].take(row[i:j]) for i, j in zip(*runs(source), strict=True)]
        table = pa.concat_tables([self.schema.empty_table(), *parts], promote_options="permissive")
        return table.select(self.schema.names)


def with_decoded_camera_stats(
    table: pa.Table, a: int, b: int, decoded: dict[int, dict[str, dict[str, Any]]]
) -> pa.Table:
    """The stored camera stats of episodes a..b-1 replaced by those of the written videos
    (`stats: recompute`); `decoded` holds them by output episode and camera."""
    found = pa.Table.from_pylist([flat_stats(decoded.get(e, {})) for e in range(a, b)])
    replaced = {stat_of(c)[0] for c in found.column_names}
    table = table.select([c for c in table.column_names if not is_stat_of(c, replaced)])
    for c in found.column_names:
        table = table.append_column(c, found[c])
    return table


def pooled_camera_stats(values: Columns) -> Summary | None:
    """One image/video feature's stats over some episodes, pooled from theirs (None unless every episode has
    min, max, mean, std and count; quantiles when every episode has them too)."""
    if any(name not in values or values[name].null_count for name in MOMENTS) or not len(values["count"]):
        return None
    shape = np.asarray(values["mean"][0].as_py()).shape
    rows = {name: column_values(values[name]) for name in MOMENTS}
    has_q = all(name in values and not values[name].null_count for name in QUANTILES)
    q = np.stack([column_values(values[name]) for name in QUANTILES]) if has_q else None
    return Summary.pooled(shape, rows["count"][:, 0], rows["mean"], rows["std"], rows["min"], rows["max"], q)


def stats_chunks(
    features: Iterable[str],
    n_episodes: int,
    scratch_fs: AbstractFileSystem,
    scratch_files: list[str],
    cameras: StoredCameraStats,
    decoded: dict[int, dict[str, dict[str, Any]]] | None,
    pooled: dict[str, Summary | None],
) -> Iterator[tuple[int, int, Columns]]:
    """Each chunk of episodes `(a, b, columns)`: their stats columns `stats/<feature>/<stat>` in feature
    order, camera stats from `decoded` where given (image stats from the data tasks' files where they are).
    Pools each camera's stats into `pooled` on the way (None for a feature some episode lacks)."""
    features = list(features)
    spans = ranges(n_episodes, per_episode.STATS_CHUNK)
    numeric_chunks = aligned_stats(per_episode.read_scratch(scratch_fs, scratch_files), spans)
    for (a, b), numeric in zip(spans, numeric_chunks, strict=True):
        stored = cameras.take(a, b)
        if decoded:
            stored = with_decoded_camera_stats(stored, a, b, decoded)
        columns: Columns = {}
        for key in features:
            from_data = (
                {c: numeric[c] for c in numeric.column_names if is_stat_of(c, {key})} if numeric is not None else {}
            )
            columns |= from_data
            # an image feature's stats recomputed by the data tasks replace the stored ones
            mine = {} if from_data else {stat_of(c)[1]: stored[c] for c in stored.column_names if is_stat_of(c, {key})}
            if mine and pooled.get(key, 0) is not None:
                part = pooled_camera_stats(mine)
                before = pooled.get(key)
                pooled[key] = part if part is None or before is None else before.merge(part)
            columns |= {f"stats/{key}/{name}": values for name, values in mine.items()}
        yield a, b, columns
        del numeric, stored, columns  # one chunk alive at a time, not two


def v21_stats_rows(chunks: Iterable[tuple[int, int, Columns]]) -> Iterator[dict[str, Any]]:
    """v2.1 `episodes_stats.jsonl` rows ({feature: {stat: value}}, moments only) from `stats_chunks`, a chunk of
    episodes at a time."""
    for a, b, stats in chunks:
        kept = [(stat_of(c), values.to_pylist()) for c, values in stats.items() if stat_of(c)[1] in MOMENTS]
        for i in range(b - a):
            row: dict[str, dict[str, Any]] = {}
            for (key, name), values in kept:
                if values[i] is not None:
                    row.setdefault(key, {})[name] = values[i]
            yield {"episode_index": a + i, "stats": row}
        del stats, kept  # before the next chunk is built
