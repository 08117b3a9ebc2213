"""`detect`, `inspect` and `preview` of a WebDataset folder or tar, from tar headers only; `preview_config`
of what a config would write, from its plan."""

from __future__ import annotations

from typing import Any

from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.errors import InvalidInput
from raymerge.executor import Executor
from raymerge.webdataset import tarindex
from raymerge.webdataset.config import Config
from raymerge.webdataset.energon import META
from raymerge.webdataset.plan import plan
from raymerge.webdataset.sources import is_shard_name, list_shards, scan
from raymerge.webdataset.writer import output_keys

MAX_DUPLICATES_SHOWN = 10


def detect(fs: AbstractFileSystem, path: str) -> bool:
    """A tar file, or a folder with tars (at any depth) or Energon metadata."""
    if not fs.isdir(path):
        return is_shard_name(path)
    if storage.exists(fs, storage.join(path, META, ".info.json")):
        return True
    return any(is_shard_name(p) for p in fs.find(path))


def inspect(fs: AbstractFileSystem, path: str) -> dict[str, Any]:
    """Shards, samples, extensions and their counts, key examples, duplicate keys, problems found."""
    _, shards = list_shards(0, storage.url(fs, path), None, fs.storage_options)
    seen: dict[str, str] = {}
    duplicates: list[str] = []
    n_duplicates = 0
    extensions: dict[str, int] = {}
    per_shard: list[dict[str, Any]] = []
    problems: list[str] = []
    examples: list[str] = []
    total = 0
    for shard in shards:
        try:
            table = scan(fs, shard)
        except InvalidInput as e:
            problems.append(str(e))
            per_shard.append({"name": shard.name, "bytes": shard.size, "samples": None})
            continue
        summary = tarindex.summarize(table)
        total += summary["samples"]
        for ext, c in summary["extensions"].items():
            extensions[ext] = extensions.get(ext, 0) + c
        examples.extend(summary["first_keys"][: 5 - len(examples)])
        for key in table["key"].to_pylist():
            if key in seen:
                n_duplicates += 1
                if len(duplicates) < MAX_DUPLICATES_SHOWN:
                    duplicates.append(f"{key} ({seen[key]}, {shard.name})")
            else:
                seen[key] = shard.name
        per_shard.append({"name": shard.name, "bytes": shard.size, "samples": summary["samples"]})
    return {
        "format": "webdataset",
        "energon_metadata": storage.exists(fs, storage.join(path, META, ".info.json")) if fs.isdir(path) else False,
        "shards": len(shards),
        "samples": total,
        "bytes": sum(s.size for s in shards),
        "extensions": dict(sorted(extensions.items(), key=lambda kv: (-kv[1], kv[0]))),
        "key_examples": examples,
        "duplicate_keys": n_duplicates,
        "duplicate_key_examples": duplicates,
        "problems": problems,
        "shard_list": per_shard,
    }


def preview(fs: AbstractFileSystem, path: str, n: int) -> list[dict[str, Any]]:
    """The first `n` samples: key, shard, and each member with its size."""
    _, shards = list_shards(0, storage.url(fs, path), None, fs.storage_options)
    records: list[dict[str, Any]] = []
    for shard in shards:
        table = scan(fs, shard)
        for key, exts, _, sizes in tarindex.samples(table):
            records.append(
                {
                    "key": key,
                    "shard": shard.name,
                    "members": {f"{key}.{e}": z for e, z in zip(exts, sizes, strict=True)},
                }
            )
            if len(records) >= n:
                return records
    return records


def preview_config(cfg: Config, n: int, executor: Executor) -> list[dict[str, Any]]:
    """The first `n` samples the config would write: output key, shard, members and their sizes, source shards."""
    the_plan = plan(cfg, executor)
    records: list[dict[str, Any]] = []
    for spec in the_plan.output_shards:
        start = spec.start
        for c, a, b in spec.pieces:
            rows = executor.get(the_plan.chunks[c])[a:b]
            keys = output_keys(rows, start, the_plan.renumber_width)
            start += b - a
            for key, (names, srcs, sizes) in zip(keys, rows.select("names", "srcs", "sizes").iter_rows(), strict=True):
                records.append(
                    {
                        "key": key,
                        "shard": spec.name,
                        "members": {f"{key}.{e}": z for e, z in sorted(zip(names, sizes, strict=True))},
                        "from": sorted({the_plan.shards[s].name for s in srcs}),
                    }
                )
                if len(records) >= n:
                    return records
    return records
