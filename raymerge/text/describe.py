"""detect, inspect and preview: what a path or a config holds, read in this process.

These read listings, headers and the first chunks only, so they answer at once and never need Ray.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.errors import InvalidInput
from raymerge.text import codecs, features, finefoundry
from raymerge.text.columns import choose_mapping
from raymerge.text.combine import output_order
from raymerge.text.config import Config
from raymerge.text.plan import open_inputs, scan_spec
from raymerge.text.readers import read_chunk
from raymerge.text.scan import ScanSpec, scan_chunk
from raymerge.text.sources import FILE_FORMATS, Chunk, Listing, Source, list_input, open_source, readme_configs

DATA_EXTENSIONS = {"parquet", "jsonl", "json", "csv", "arrow"}


def detect(fs: AbstractFileSystem, path: str) -> bool:
    """True for a text file, a FineFoundry database or a folder of data files; other families are probed first,
    so a folder of parquet files here is what is left. One listing answers all the folder's questions."""
    listing = list_input(fs, path)
    if path in listing or not listing:
        name = codecs.inner_path(storage.basename(path))
        ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        if f".{ext}" in FILE_FORMATS:
            return True
        return _is_sqlite(fs, path, listing)
    for marker in ("refs/main", "dataset_dict.json", "state.json"):
        if storage.join(path, marker) in listing:
            return True
    if readme_configs(fs, path, listing):
        return True
    return any(codecs.inner_path(f).rsplit(".", 1)[-1].lower() in DATA_EXTENSIONS for f in listing)


def _is_sqlite(fs: AbstractFileSystem, path: str, listing: Listing) -> bool:
    size = int(listing[path]["size"]) if path in listing else None
    return codecs.read_head(fs, path, None, size).startswith(finefoundry.SQLITE_MAGIC)


def inspect(fs: AbstractFileSystem, path: str) -> dict[str, Any]:
    """Format, files, columns, the mapping that would be used and the row count; a database lists its
    sessions, since a config must choose one."""
    where = storage.url(fs, path)
    listing = list_input(fs, path)
    if path in listing and _is_sqlite(fs, path, listing):
        sessions = finefoundry.list_sessions(finefoundry.local_sqlite(fs, path), where)
        return {"format": "sqlite (FineFoundry)", "path": where, "sessions": sessions}
    src = open_source(fs, path, listing=listing)
    info: dict[str, Any] = {"format": src.kind, "path": where, **src.details}
    info["files"] = len({c.path for c in src.chunks})
    first = read_chunk(fs, src.chunks[0]) if src.chunks else None
    if first is not None:
        info["columns"] = {n: features.describe(f) for n, f in features.features_of(first.schema).items()}
        try:
            info["mapping"] = choose_mapping(first.schema, where).describe()
        except InvalidInput as e:
            info["mapping"] = f"none: {e}"
    info["rows"] = sum(_rows(fs, c) for c in src.chunks)
    return info


def _rows(fs: AbstractFileSystem, chunk: Chunk) -> int:
    if chunk.format == "parquet":
        with codecs.open_stream(fs, chunk.path, None, chunk.size) as f:
            meta = pq.ParquetFile(f).metadata
        return sum(meta.row_group(g).num_rows for g in range(chunk.start, chunk.stop))
    return read_chunk(fs, chunk).num_rows


def source_pairs(src: Source, spec: ScanSpec | None = None) -> Iterator[dict[str, Any]]:
    """A source's pairs (or rows) as a run would write them, read chunk by chunk in this process: a preview
    stops after the first chunk it needs."""
    for chunk in src.chunks:
        _, rows = scan_chunk(src.fs, chunk, src.url, spec or ScanSpec())
        yield from rows.to_pylist()


def _first(it: Iterator[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for row in it:
        if len(out) >= n:
            break
        out.append(row)
    return out


def preview(fs: AbstractFileSystem, path: str, n: int) -> list[dict[str, Any]]:
    """The first `n` pairs of a dataset, as a merge would write them."""
    return _first(source_pairs(open_source(fs, path)), n)


def preview_config(cfg: Config, n: int) -> list[dict[str, Any]]:
    """The first n pairs the config would write.

    Reading n pairs per source is enough: a source with at least n pairs cannot change the
    first n rows of any concat/interleave order, so its length is capped at n.
    """
    heads = [
        _first(source_pairs(src, scan_spec(cfg, inp)), n)
        for (_, src), inp in zip(open_inputs(cfg), cfg.inputs, strict=True)
    ]
    if cfg.columns == "keep":  # a column some sources lack is null in their rows, as in the merged output
        names = list(dict.fromkeys(k for h in heads for r in h for k in r))
        heads = [[{k: r.get(k) for k in names} for r in h] for h in heads]
    lengths = [len(h) for h in heads]
    order = output_order(cfg, lengths)
    seen_count = [0] * len(heads)
    out, seen = [], set()
    for s in order:
        row = heads[s][seen_count[s] % lengths[s]]
        seen_count[s] += 1
        if cfg.dedup:
            key = (row["input"], row["output"])
            if key in seen:
                continue
            seen.add(key)
        out.append(row)
        if len(out) >= n:
            break
    return out
