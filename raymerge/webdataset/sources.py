"""Which tar files make up an input: a folder (recursive), one tar, a brace pattern, or a list of URLs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Any

import braceexpand
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.errors import InvalidInput

TAR_SUFFIXES = (".tar",)
COMPRESSED_SUFFIXES = (".tar.gz", ".tgz")


@dataclass(frozen=True)
class Shard:
    """One input tar: plain values only, so it travels to Ray tasks as is."""

    input: int
    path: str
    name: str  # relative to the input's root, for messages and reports
    size: int
    compressed: bool


def is_shard_name(name: str) -> bool:
    return name.endswith(TAR_SUFFIXES + COMPRESSED_SUFFIXES)


def list_shards(
    index: int, path: str, shards: list[str] | None, storage_options: dict[str, Any]
) -> tuple[AbstractFileSystem, list[Shard]]:
    """The input's shards in a stable order (sorted for folders, as given for patterns and lists)."""
    if shards is not None:
        fs, root = storage.resolve(path, storage_options)
        urls = [u if "://" in u or u.startswith("/") else storage.join(root, u) for s in shards for u in _expand(s)]
        return fs, [_shard(fs, index, storage.resolve(u, storage_options)[1], root) for u in urls]
    if "{" in path:
        expanded = _expand(path)
        fs, first = storage.resolve(expanded[0], storage_options)
        root = storage.parent(first)
        return fs, [_shard(fs, index, storage.resolve(u, storage_options)[1], root) for u in expanded]
    fs, root = storage.resolve(path, storage_options)
    if not storage.exists(fs, root):
        raise InvalidInput(f"input {storage.url(fs, root)}: no such file or folder")
    if not fs.isdir(root):
        return fs, [_shard(fs, index, root, storage.parent(root))]
    found = fs.find(root, detail=True)
    names = sorted(p for p, info in found.items() if info.get("type") != "directory" and is_shard_name(p))
    if not names:
        raise InvalidInput(f"input {storage.url(fs, root)}: no .tar, .tar.gz or .tgz files in this folder")
    return fs, [_shard_from_info(index, p, root, found[p]) for p in names]


def _expand(pattern: str) -> list[str]:
    return list(braceexpand.braceexpand(pattern))


def _shard(fs: AbstractFileSystem, index: int, path: str, root: str) -> Shard:
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise InvalidInput(f"input shard {storage.url(fs, path)}: not found") from None
    if info.get("type") == "directory" or not is_shard_name(path):
        raise InvalidInput(f"input shard {storage.url(fs, path)}: expected a .tar, .tar.gz or .tgz file")
    return _shard_from_info(index, path, root, info)


def _shard_from_info(index: int, path: str, root: str, info: dict[str, Any]) -> Shard:
    name = path[len(root) + 1 :] if path.startswith(root + "/") else storage.basename(path)
    return Shard(index, path, name, int(info.get("size") or 0), path.endswith(COMPRESSED_SUFFIXES))


def open_shard(fs: AbstractFileSystem, shard: Shard) -> IO[bytes]:
    """A plain file object for local shards (the header scan seeks per member), fsspec's otherwise."""
    return open(shard.path, "rb") if storage.is_local(fs) else fs.open(shard.path, "rb")
