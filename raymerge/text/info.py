"""detect, inspect and preview: in-process reads of the first chunks, no Ray needed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.errors import InvalidInput
from raymerge.ordering import concat_order, interleave_order
from raymerge.text.blocks import scan_chunk
from raymerge.text.columns import choose_mapping
from raymerge.text.config import Config
from raymerge.text.sources import (
    FILE_FORMATS,
    SQLITE_MAGIC,
    Source,
    list_sessions,
    local_sqlite,
    open_source,
    read_chunk,
    readme_configs,
)


def detect(fs: AbstractFileSystem, path: str) -> bool:
    if not fs.isdir(path):
        ext = path.rsplit(".", 1)[-1].lower() if "." in storage.basename(path) else ""
        if f".{ext}" in FILE_FORMATS:
            return True
        with fs.open(path, "rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    for marker in ("refs/main", "dataset_dict.json", "state.json"):
        if storage.exists(fs, storage.join(path, marker)):
            return True
    if readme_configs(fs, path):
        return True
    return any(f.rsplit(".", 1)[-1].lower() in {"parquet", "jsonl", "json", "csv", "arrow"} for f in fs.find(path))


def _sqlite_sessions(fs: AbstractFileSystem, path: str) -> list[dict] | None:
    if fs.isdir(path):
        return None
    with fs.open(path, "rb") as f:
        if f.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
            return None
    return list_sessions(local_sqlite(fs, path), storage.url(fs, path))


def inspect(fs: AbstractFileSystem, path: str) -> dict[str, Any]:
    where = storage.url(fs, path)
    sessions = _sqlite_sessions(fs, path)
    if sessions is not None:
        return {"format": "sqlite (FineFoundry)", "path": where, "sessions": sessions}
    src = open_source(fs, path)
    info: dict[str, Any] = {"format": src.kind, "path": where, **src.details}
    info["files"] = len({c.path for c in src.chunks})
    first = read_chunk(fs, src.chunks[0]) if src.chunks else None
    if first is not None:
        info["columns"] = {n: str(t) for n, t in zip(first.schema.names, first.schema.types, strict=True)}
        try:
            info["mapping"] = choose_mapping(first.schema, where).describe()
        except InvalidInput as e:
            info["mapping"] = f"none: {e}"
    info["rows"] = sum(_rows(fs, c) for c in src.chunks)
    return info


def _rows(fs: AbstractFileSystem, chunk) -> int:
    if chunk.format == "parquet":
        with fs.open(chunk.path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        return sum(meta.row_group(g).num_rows for g in range(chunk.start, chunk.stop))
    return read_chunk(fs, chunk).num_rows


def _pairs(src: Source, input_column: str | None = None, output_column: str | None = None) -> Iterator[dict]:
    for chunk in src.chunks:
        _, pairs = scan_chunk(src.fs, chunk, src.url, input_column, output_column, False)
        yield from pairs.to_pylist()


def _first(it: Iterator[dict], n: int) -> list[dict]:
    out = []
    for row in it:
        if len(out) >= n:
            break
        out.append(row)
    return out


def preview(fs: AbstractFileSystem, path: str, n: int) -> list[dict]:
    return _first(_pairs(open_source(fs, path)), n)


def preview_config(cfg: Config, n: int) -> list[dict]:
    """The first n pairs the config would write.

    Reading n pairs per source is enough: a source with at least n pairs cannot change the
    first n rows of any concat/interleave order, so its length is capped at n.
    """
    heads = []
    for inp in cfg.inputs:
        fs, path = storage.resolve(inp.path, inp.storage_options)
        src = open_source(fs, path, inp.format, inp.split, inp.config, inp.session)
        heads.append(_first(_pairs(src, inp.input_column, inp.output_column), n))
    lengths = [len(h) for h in heads]
    if cfg.operation == "concat":
        order = concat_order(lengths)
    else:
        c = cfg.combine
        order = interleave_order(lengths, c.probabilities, c.seed, c.stopping_strategy, cfg.input_names())
    seen_count = [0] * len(heads)
    out, seen = [], set()
    for s in order:
        row = heads[s][seen_count[s] % lengths[s]]
        seen_count[s] += 1
        key = (row["input"], row["output"])
        if cfg.dedup and key in seen:
            continue
        seen.add(key)
        out.append(row)
        if len(out) >= n:
            break
    return out
