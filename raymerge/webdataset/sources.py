"""Which tar files make up an input: a folder (recursive), one tar, a brace pattern, or a list of URLs."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any, overload

import braceexpand
import numpy as np
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.errors import InvalidInput
from raymerge.webdataset import inline, sourceindex, tarindex, tarmembers
from raymerge.webdataset.config import WdsInput
from raymerge.webdataset.rangescan import RangeHeaders
from raymerge.webdataset.sourceindex import IndexRef

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


class ShardList(Sequence[Shard]):
    """Every input shard as one value that travels to writer tasks: pickled once, decoded where first
    indexed. Decoding thousands of `Shard`s costs ~1 µs each in every task that receives them, and a
    writer whose members are all carried (`inline`) never looks at one."""

    def __init__(self, shards: Sequence[Shard] = (), *, blob: bytes | None = None, length: int = 0) -> None:
        self._items: list[Shard] | None = None if blob is not None else list(shards)
        self._blob = blob
        self._length = length if blob is not None else len(shards)

    def __reduce__(self) -> tuple[Any, ...]:
        if self._blob is None:
            self._blob = pickle.dumps(self._items, protocol=pickle.HIGHEST_PROTOCOL)
        return (_shard_list, (self._blob, self._length))

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, i: int) -> Shard: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Shard]: ...
    def __getitem__(self, i: int | slice) -> Shard | Sequence[Shard]:
        if self._items is None:
            self._items = pickle.loads(self._blob or b"")
        return self._items[i]


def _shard_list(blob: bytes, length: int) -> ShardList:
    return ShardList(blob=blob, length=length)


@dataclass(frozen=True)
class Listing:
    """Every input's shards, found once before Ray starts: what the plan scans and the manifest fingerprints."""

    shards: list[Shard]
    filesystems: list[AbstractFileSystem]  # per input
    fingerprints: list[dict[str, Any]]  # per input
    indexes: list[IndexRef | None]  # per input: its own member index, if it carries one (`sourceindex`)

    @property
    def nbytes(self) -> int:
        """The inputs' total size: what decides whether Ray pays for itself."""
        return sum(s.size for s in self.shards)


def list_inputs(inputs: Sequence[WdsInput]) -> Listing:
    """Every input's shards in order; a missing input, shard or empty folder is refused here."""
    shards: list[Shard] = []
    filesystems, fingerprints, indexes = [], [], []
    for i, inp in enumerate(inputs):
        fs, found, index = list_input(i, inp.path, inp.shards, inp.storage_options)
        filesystems.append(fs)
        shards.extend(found)
        fingerprints.append(_fingerprint(fs, inp.path, inp.storage_options, found))
        indexes.append(index)
    return Listing(shards, filesystems, fingerprints, indexes)


def _fingerprint(fs: AbstractFileSystem, path: str, options: dict, found: list[Shard]) -> dict[str, Any]:
    """The listing fingerprint of a folder or file; for patterns and lists, of the shards themselves."""
    root = storage.resolve(path, options)[1]
    if "{" not in path and storage.exists(fs, root):
        return storage.fingerprint(fs, root)
    return {"path": path, "files": len(found), "bytes": sum(s.size for s in found), "shards": [s.name for s in found]}


def is_shard_name(name: str) -> bool:
    """Tars by their suffix: other files beside shards (`.tar.idx`, `raymerge.json`) are not inputs."""
    return name.endswith(TAR_SUFFIXES + COMPRESSED_SUFFIXES)


def list_shards(
    index: int, path: str, shards: list[str] | None, storage_options: dict[str, Any]
) -> tuple[AbstractFileSystem, list[Shard]]:
    """The input's shards in a stable order (sorted for folders, as given for patterns and lists)."""
    fs, found, _ = list_input(index, path, shards, storage_options)
    return fs, found


def list_input(
    index: int, path: str, shards: list[str] | None, storage_options: dict[str, Any]
) -> tuple[AbstractFileSystem, list[Shard], IndexRef | None]:
    """`list_shards`, and the member index a folder carries (`sourceindex`), found in the same listing."""
    if shards is not None:
        fs, root = storage.resolve(path, storage_options)
        urls = [u if "://" in u or u.startswith("/") else storage.join(root, u) for s in shards for u in _expand(s)]
        return fs, [_shard(fs, index, storage.resolve(u, storage_options)[1], root) for u in urls], None
    if "{" in path:
        expanded = _expand(path)
        fs, first = storage.resolve(expanded[0], storage_options)
        root = storage.parent(first)
        return fs, [_shard(fs, index, storage.resolve(u, storage_options)[1], root) for u in expanded], None
    fs, root = storage.resolve(path, storage_options)
    if not storage.exists(fs, root):
        raise InvalidInput(f"input {storage.url(fs, root)}: no such file or folder")
    if not fs.isdir(root):
        return fs, [_shard(fs, index, root, storage.parent(root))], None
    found = fs.find(root, detail=True)
    names = sorted(p for p, info in found.items() if info.get("type") != "directory" and is_shard_name(p))
    if not names:
        raise InvalidInput(f"input {storage.url(fs, root)}: no .tar, .tar.gz or .tgz files in this folder")
    return fs, [_shard_from_info(index, p, root, found[p]) for p in names], sourceindex.find(root, found)


def _expand(pattern: str) -> list[str]:
    """WebDataset's brace patterns (`shard-{000..009}.tar`), in their order."""
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


def open_shard(fs: AbstractFileSystem, shard: Shard) -> IO[bytes] | RangeHeaders:
    """A plain file for local shards (mapped by the header scan); on object storage, the headers by ranged
    reads (`rangescan`); a compressed remote shard streamed through fsspec (it is read forward, whole)."""
    if storage.is_local(fs):
        return open(shard.path, "rb")
    if shard.compressed:
        return fs.open(shard.path, "rb")
    return RangeHeaders(lambda start, end: fs.cat_file(shard.path, start=start, end=end), shard.size)


def scan(fs: AbstractFileSystem, shard: Shard, carry: int = 0) -> dict[str, Any]:
    """The checked sample table of one shard (`tarindex.scan_tar`), from its headers only.

    With `carry`, a local plain shard also carries its tiny members' payload, up to that many bytes
    (`inline`), copied as its headers are read (or gathered after, from the same mapping, where the scan
    could not take them all): its pages are touched once.
    """
    f = open_shard(fs, shard)
    try:
        if isinstance(f, RangeHeaders) or shard.compressed:
            return _scan(fs, shard, f)
        view = tarmembers.mapped(f)
        table = _scan(fs, shard, f if view is None else view, carry)
        if carry:
            if "data" not in table:  # the scan could not copy them on its way (`tarindex.scan_tar`)
                table["data"] = (
                    None if view is None else inline.shard_payloads(view, table["offsets"], table["sizes"], carry)
                )
            del view  # unmapped here: the kernel keeps pages that are still mapped
            inline.release(f.fileno(), table["data"])
        return table
    finally:
        if not isinstance(f, RangeHeaders):
            f.close()


def _scan(
    fs: AbstractFileSystem, shard: Shard, source: IO[bytes] | RangeHeaders | np.ndarray, carry: int = 0
) -> dict[str, Any]:
    """`tarindex.scan_tar` of the shard's bytes; one that its headers alone do not describe, read whole by tarfile."""
    size = None if shard.compressed else shard.size
    try:
        return tarindex.scan_tar(source, shard.name, compressed=shard.compressed, size=size, carry=carry)
    except tarindex.NotPlainUstar:
        with fs.open(shard.path, "rb", size=shard.size) as whole:
            return tarindex.scan_tar(whole, shard.name, compressed=shard.compressed, size=size)
