"""The dataset folders Hugging Face users load directly, written from the blocks by parallel shard tasks.

- `hf`: a Parquet folder in the Hub layout, `data/<split>-00000-of-0000N.parquet`, with a README.md dataset
  card whose YAML header (`configs:` data files, `dataset_info` features and sizes) is what `push_to_hub`
  writes, so `load_dataset(folder)` (or the Hub, once uploaded) reads it as it was merged.
- `save_to_disk`: `data-00000-of-0000N.arrow` Arrow stream files, `dataset_info.json` and `state.json`, as
  `Dataset.save_to_disk` writes them, for `load_from_disk`.

Shards are cut as `datasets` cuts them: N = Arrow bytes // max_shard_size + 1 (at most one per row), each a
contiguous range of rows (`Dataset.shard(N, i, contiguous=True)`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import yaml
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.text import sinks
from raymerge.text.features import Features, to_yaml_list

ARROW_BATCH_ROWS = 1000  # `datasets`' writer batch size


def shard_ranges(rows: int, nbytes: int, max_shard_size: int) -> list[tuple[int, int]]:
    """The contiguous row range of each shard, as `save_to_disk`/`push_to_hub` choose them."""
    n = max(1, min(nbytes // max_shard_size + 1, rows))
    div, mod = divmod(rows, n)
    starts = [div * i + min(i, mod) for i in range(n)]
    return [(s, s + div + (1 if i < mod else 0)) for i, s in enumerate(starts)]


def shard_path(fmt: str, root: str, split: str, index: int, count: int) -> str:
    if fmt == "hf":
        return storage.join(root, "data", f"{split}-{index:05d}-of-{count:05d}.parquet")
    return storage.join(root, f"data-{index:05d}-of-{count:05d}.arrow")


def parts_for(part_rows: list[int], start: int, stop: int, part_path: Any) -> list[tuple[str, int, int]]:
    """(path, first output row, rows) of the parts that hold rows [start, stop)."""
    out, first = [], 0
    for i, n in enumerate(part_rows):
        if n and first < stop and start < first + n:
            out.append((part_path(i), first, n))
        first += n
    return out


def _rows(
    parts: Iterable[tuple[Iterable[pa.RecordBatch], int, int]], start: int, stop: int
) -> Iterator[pa.RecordBatch]:
    """Rows [start, stop) of the output from (batches, first output row, rows) of the parts holding them."""
    for batches, first, _ in parts:
        lo, hi = start - first, stop - first
        for batch in batches:
            if hi > 0 and lo < batch.num_rows:
                yield batch.slice(max(lo, 0), min(hi, batch.num_rows) - max(lo, 0))
            lo, hi = lo - batch.num_rows, hi - batch.num_rows


def _batches(batches: Iterator[pa.RecordBatch], rows: int, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    for table in sinks.fixed_row_groups(batches, rows, schema):
        yield from table.combine_chunks().to_batches()


def write_shard(
    fmt: str,
    parts_fs: AbstractFileSystem | None,
    parts: list[tuple[str, int, int]],
    start: int,
    stop: int,
    out_fs: AbstractFileSystem,
    out_path: str,
    schema: pa.Schema,
    *tables: pa.Table,
) -> tuple[int, str]:
    """One shard file from the (path, first output row, rows) parts holding its rows: part files read from
    `parts_fs`, or the blocks' own Arrow tables (`tables`, one per part: on object storage the blocks are never
    stored as files). Returns its size and sha256 (the folder's fingerprint)."""
    if tables:
        found = [(t.to_batches(), first, n) for t, (_, first, n) in zip(tables, parts, strict=True)]
    else:
        assert parts_fs is not None
        found = [(sinks.iter_arrow_parts(parts_fs, [path]), first, n) for path, first, n in parts]
    return _write_shard(fmt, _rows(found, start, stop), out_fs, out_path, schema)


def _write_shard(
    fmt: str, rows: Iterator[pa.RecordBatch], out_fs: AbstractFileSystem, out_path: str, schema: pa.Schema
) -> tuple[int, str]:
    digest = hashlib.sha256()
    with out_fs.open(out_path, "wb") as raw:
        out = _Hashing(raw, digest)
        if fmt == "hf":
            sinks.write_parquet(rows, out, schema)  # type: ignore[arg-type]
        else:
            with pa.ipc.new_stream(out, schema) as w:
                for batch in _batches(rows, ARROW_BATCH_ROWS, schema):
                    w.write_batch(batch)
    return out.size, digest.hexdigest()


class _Hashing:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, raw: Any, digest: Any) -> None:
        self.raw, self.digest, self.size = raw, digest, 0
        self.closed = False

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self.digest.update(view)
        self.size += view.nbytes
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()

    def tell(self) -> int:
        return self.size

    def close(self) -> None:
        self.closed = True


def readme(features: Features, split: str, rows: int, nbytes: int, download_size: int) -> str:
    """The dataset card `push_to_hub` writes: its YAML header names the data files and describes the features."""
    header = {
        "dataset_info": {
            "features": to_yaml_list(features),
            "splits": [{"name": split, "num_bytes": nbytes, "num_examples": rows}],
            "download_size": download_size,
            "dataset_size": nbytes,
        },
        "configs": [{"config_name": "default", "data_files": [{"split": split, "path": f"data/{split}-*"}]}],
    }
    body = yaml.safe_dump(header, sort_keys=False, allow_unicode=True)
    return f"---\n{body}---\n\nMerged by raymerge: {rows:,} rows in split `{split}`.\n"


def write_metadata(
    fmt: str,
    fs: AbstractFileSystem,
    root: str,
    features: Features,
    split: str,
    rows: int,
    nbytes: int,
    shards: list[tuple[int, str]],
) -> None:
    """The files beside the shards: README.md for `hf`; dataset_info.json and state.json for `save_to_disk`
    (the fingerprint is the hash of the shards, so the same data gives the same folder)."""
    if fmt == "hf":
        _write_text(
            fs, storage.join(root, "README.md"), readme(features, split, rows, nbytes, sum(s for s, _ in shards))
        )
        return
    info = {"citation": "", "description": "", "features": features, "homepage": "", "license": ""}
    _write_text(fs, storage.join(root, "dataset_info.json"), json.dumps(info, indent=2))
    fingerprint = hashlib.sha256("".join(d for _, d in shards).encode()).hexdigest()[:16]
    state: dict[str, Any] = {
        "_data_files": [
            {"filename": storage.basename(shard_path(fmt, root, split, i, len(shards)))} for i in range(len(shards))
        ],
        "_fingerprint": fingerprint,
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": split,
    }
    _write_text(fs, storage.join(root, "state.json"), json.dumps(state, indent=2))


def _write_text(fs: AbstractFileSystem, path: str, text: str) -> None:
    with fs.open(path, "wb") as f:
        f.write(text.encode())
