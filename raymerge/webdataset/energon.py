"""Megatron-Energon 7.4 metadata, so an output loads with no `energon prepare`.

Formats follow energon's `WebdatasetPreparator` and `SqliteIndexWriter` (flavors/webdataset/prepare.py,
indexing.py): `.nv-meta/.info.json`, `split.yaml`, `dataset.yaml`, `index.sqlite` + `index.uuid`,
and a `<shard>.tar.idx` of little-endian uint64 sample offsets plus the end offset.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import uuid
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from fsspec import AbstractFileSystem

from raymerge import sqliteimage, storage
from raymerge.errors import InvalidInput, RunFailed

META = ".nv-meta"
ENERGON_FORMAT_VERSION = "7.4.1"
IDX_SUFFIX = ".idx"  # energon: tar_path.with_suffix(".tar.idx")
KEY_BATCH = 1 << 18  # sorted keys appended to the key index at a time

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS samples (
                    tar_file_id INTEGER NOT NULL,
                    sample_key TEXT NOT NULL UNIQUE,
                    sample_index INTEGER NOT NULL,
                    byte_offset INTEGER,
                    byte_size INTEGER
                )""",
    """CREATE TABLE IF NOT EXISTS sample_parts (
                    tar_file_id INTEGER,
                    sample_index INTEGER,
                    part_name TEXT,
                    content_byte_offset INTEGER,
                    content_byte_size INTEGER
                )""",
)
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS idx_samples_by_tar_and_idx ON samples(tar_file_id, sample_index)",
    "CREATE INDEX IF NOT EXISTS idx_sample_parts_seq ON sample_parts(tar_file_id, sample_index, content_byte_offset)",
    "CREATE INDEX IF NOT EXISTS idx_sample_parts_full ON sample_parts"
    "(tar_file_id, sample_index, part_name, content_byte_offset, content_byte_size)",
)


def tar_index_bytes(offsets: np.ndarray) -> bytes:
    """A `.tar.idx`: each sample's header offset and the end offset, little-endian uint64, as energon reads it."""
    return np.asarray(offsets, dtype="<u8").tobytes()


def info_json(shard_counts: dict[str, int]) -> str:
    """`.nv-meta/.info.json`: samples per shard, whose key order gives the shard ids."""
    return json.dumps({"energon_version": ENERGON_FORMAT_VERSION, "shard_counts": shard_counts}, indent=2)


def split_yaml(split_parts: dict[str, list[str]]) -> str:
    """`.nv-meta/split.yaml`: the shards of each split part."""
    return yaml.dump({"split_parts": split_parts, "exclude": []}, sort_keys=False)


def dataset_yaml(sample_type: str | None, field_map: dict[str, str] | None) -> str:
    """CrudeWebdataset (a plain dict per sample for a cooker) unless a sample type is named."""
    if sample_type is None:
        definition: dict[str, Any] = {"__module__": "megatron.energon", "__class__": "CrudeWebdataset"}
    else:
        definition = {"sample_type": {"__module__": "megatron.energon", "__class__": sample_type}}
        if field_map is not None:
            definition["field_map"] = dict(field_map)
    return yaml.dump(definition, sort_keys=False)


def write_text(fs: AbstractFileSystem, path: str, text: str) -> None:
    """One small metadata file, local or on object storage."""
    with fs.open(path, "w") as f:
        f.write(text)


def write_meta(
    fs: AbstractFileSystem,
    root: str,
    shard_counts: dict[str, int],
    split_parts: dict[str, list[str]],
    sample_type: str | None,
    field_map: dict[str, str] | None,
) -> list[str]:
    """The small `.nv-meta` files; returns their paths relative to the output."""
    fs.makedirs(storage.join(root, META), exist_ok=True)
    files = {
        ".info.json": info_json(shard_counts),
        "split.yaml": split_yaml(split_parts),
        "dataset.yaml": dataset_yaml(sample_type, field_map),
    }
    for name, text in files.items():
        write_text(fs, storage.join(root, META, name), text)
    return [f"{META}/{name}" for name in files]


IndexRows = tuple[pa.Table, pa.Table]  # one shard's `samples` and `sample_parts` rows (`index_rows`)


def index_rows(samples: pa.Table, parts: pa.Table) -> IndexRows:
    """One shard's `samples` and `sample_parts` rows, in their tables' order; the parts also in the order of
    the index over all their columns (`full`: row numbers), sorted here, by the shard's writer, in parallel
    with the others (a writer's parts are in that order already: by sample, then extension)."""
    columns = ["sample_index", "part_name", "content_byte_offset", "content_byte_size"]
    parts = parts.select(columns).set_column(3, columns[3], parts.column(columns[3]).cast(pa.int64()))
    if _sorted_by(parts, columns):
        full = np.arange(parts.num_rows, dtype=np.int64)
    else:
        full = pc.sort_indices(parts, sort_keys=[(c, "ascending") for c in columns]).to_numpy().astype(np.int64)
    return samples.select(["sample_key", "byte_offset", "byte_size"]), parts.append_column("full", pa.array(full))


def _sorted_by(table: pa.Table, columns: list[str]) -> bool:
    """Whether every row comes after the one before it by `columns` (ties all the way down allowed)."""
    n = table.num_rows
    if n < 2:
        return True
    after = np.ones(n - 1, dtype=bool)
    for c in reversed(columns):  # row >= previous row, column by column from the last
        column = table.column(c)
        now, before = column.slice(1), column.slice(0, n - 1)
        greater = pc.greater(now, before).to_numpy(zero_copy_only=False)
        after = greater | (pc.equal(now, before).to_numpy(zero_copy_only=False) & after)
    return bool(after.all())


def _schema() -> list[tuple[str, str, str, str | None]]:
    """`sqlite_schema`'s rows as SQLite itself stores energon's statements (types, names, text)."""
    db = sqlite3.connect(":memory:")
    for statement in (*_SCHEMA, *_INDEXES):
        db.execute(statement)
    rows = db.execute("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY rowid").fetchall()
    db.close()
    return rows


class IndexBuilder:
    """`index.sqlite`, written as the writers finish, in order: each shard's rows extend the tables and the
    indexes that follow shard order (`sqliteimage.DatabaseFile`, leaf pages written as they fill). The
    index of sample keys needs every key sorted: it is built first (`keys`), from the output's keys
    taken from the ordered key tables before a shard is written, so that it overlaps the writers instead
    of following them (at 10^7 keys, ~2.5 s on one core at the end of the run). Through sqlite3 the same
    rows took ~0.85 us each with their indexes on one core, more than the writers of their shards; here
    a row or index entry takes ~0.04-0.07 us. The file is written in place when the output is local (no
    copy of it at the end), else beside and uploaded.

    Runs as the executor's actor: on Ray, each shard's index rows go from its writer to the actor, never
    through the driver.
    """

    def __init__(self, fs: AbstractFileSystem, root: str) -> None:
        self._fs, self._root = fs, root
        self._tmp = None if storage.is_local(fs) else tempfile.TemporaryDirectory(prefix="raymerge-energon-")
        if self._tmp is None:
            fs.makedirs(storage.join(root, META), exist_ok=True)
            self._path = storage.join(root, META, "index.sqlite")
        else:
            self._path = os.path.join(self._tmp.name, "index.sqlite")
        self._db = sqliteimage.DatabaseFile(self._path, _schema())
        self._keys: int | None = None  # how many keys `keys` indexed
        self._samples = self._parts = 0

    def keys(self, *runs: pa.Array) -> None:
        """The index of sample keys, from every key of the output in output order (`runs` one after the
        other: the sample with rowid r has key r - 1); called once, before `finish`. Keys must be unique
        (Energon looks samples up by key): a key twice fails the run."""
        keys = pl.Series(pa.chunked_array([r.cast(pa.large_string()) for r in runs], type=pa.large_string()))
        order = keys.arg_sort().to_numpy()
        ordered = keys.gather(order)
        same = (ordered[1:] == ordered[:-1]).to_numpy()
        if same.any():
            self._db.abandon()
            raise InvalidInput(
                f"index.sqlite: sample key {ordered[int(np.argmax(same))]!r} occurs more than once "
                "(Energon needs unique keys)"
            )
        keys_in_order = ordered.to_arrow()
        for a in range(0, len(order), KEY_BATCH):  # batches: the kernel's buffers stay small and are reused
            part = keys_in_order.slice(a, KEY_BATCH)
            rowids = order[a : a + KEY_BATCH].astype(np.int64) + 1
            self._db.append("sqlite_autoindex_samples_1", [sqliteimage.text_from_arrow(part), rowids])
        self._keys = len(keys)

    def add(self, first_tar_id: int, shards: list[IndexRows]) -> None:
        """Consecutive shards' rows (`index_rows`), the first being `first_tar_id`; shards must come in order."""
        for i, rows in enumerate(shards):
            self._add(first_tar_id + i, rows)

    def _add(self, tar_id: int, rows: IndexRows) -> None:
        samples, parts = rows
        n, m = samples.num_rows, parts.num_rows
        rowids = np.arange(self._samples + 1, self._samples + n + 1, dtype=np.int64)
        part_rowids = np.arange(self._parts + 1, self._parts + m + 1, dtype=np.int64)
        self._samples, self._parts = self._samples + n, self._parts + m
        keys = samples["sample_key"].combine_chunks().cast(pa.large_string())
        tar, index = np.full(n, tar_id, dtype=np.int64), np.arange(n, dtype=np.int64)
        db = self._db
        db.append("samples", [tar, sqliteimage.text_from_arrow(keys), index, *_ints(samples, 1, 2)], rowids)
        db.append("idx_samples_by_tar_and_idx", [tar, index, rowids])
        part_tar = np.full(m, tar_id, dtype=np.int64)
        sample_index, offset, size = _ints(parts, "sample_index", "content_byte_offset", "content_byte_size")
        names = parts["part_name"]
        db.append(
            "sample_parts", [part_tar, sample_index, sqliteimage.text_from_arrow(names), offset, size], part_rowids
        )
        seq = _in_order(sample_index, offset)
        db.append("idx_sample_parts_seq", [part_tar, *_take([sample_index, offset, part_rowids], seq)])
        full = parts["full"].to_numpy()
        full = None if bool((full == np.arange(m)).all()) else full
        ordered_names = names if full is None else names.take(full)
        sample_index, offset, size, part_rowids = _take([sample_index, offset, size, part_rowids], full)
        db.append(
            "idx_sample_parts_full",
            [part_tar, sample_index, sqliteimage.text_from_arrow(ordered_names), offset, size, part_rowids],
        )

    def finish(self) -> list[str]:
        """The file completed and put in place; returns the paths written, relative to the output."""
        fs, root = self._fs, self._root
        if self._keys != self._samples:
            self._db.abandon()
            raise RunFailed(f"index.sqlite: {self._keys} sample keys indexed for {self._samples} samples")
        self._db.close()
        if self._tmp is not None:
            fs.makedirs(storage.join(root, META), exist_ok=True)
            fs.put_file(self._path, storage.join(root, META, "index.sqlite"))
            self._tmp.cleanup()
        write_text(fs, storage.join(root, META, "index.uuid"), str(uuid.uuid4()))
        return [f"{META}/index.sqlite", f"{META}/index.uuid"]


def _in_order(sample_index: np.ndarray, offset: np.ndarray) -> np.ndarray | None:
    """The rows' order by (sample, offset), or None when they are in it already (as a writer puts them)."""
    same = sample_index[1:] == sample_index[:-1]
    if bool(((sample_index[1:] > sample_index[:-1]) | (same & (offset[1:] > offset[:-1]))).all()):
        return None
    return np.lexsort((np.arange(len(offset)), offset, sample_index))


def _take(columns: list[np.ndarray], order: np.ndarray | None) -> list[np.ndarray]:
    return columns if order is None else [c[order] for c in columns]


def _ints(table: pa.Table, *columns: int | str) -> list[np.ndarray]:
    return [table.column(c).to_numpy().astype(np.int64, copy=False) for c in columns]
