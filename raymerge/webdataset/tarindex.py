"""Tar headers to a sample table: key, member extensions, data offsets and sizes. Payload is never read.

Keys follow WebDataset/Energon: the member path up to the first dot of its last component
(`a/b.seg.png` -> key `a/b`, extension `seg.png`). A sample is a run of adjacent members with one key.
"""

from __future__ import annotations

import re
import tarfile
from typing import IO, Any

from raymerge.errors import InvalidInput

# Energon 7.4's own patterns (megatron/energon/flavors/webdataset/config.py), so keys match exactly.
_SAMPLE_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_META_NAME = re.compile(r"__[^/]*__($|/)")

COLUMNS = ("key", "ordinal", "exts", "offsets", "sizes", "nbytes")


def split_name(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member name, or None when the name carries no key."""
    m = _SAMPLE_NAME.match(name)
    return (m.group(1), m.group(2)) if m else None


def is_meta(name: str) -> bool:
    return _META_NAME.search(name) is not None


def unsafe_reason(info: tarfile.TarInfo) -> str | None:
    """Why a member must not be copied into a dataset (links, devices, names escaping the folder)."""
    if info.issym() or info.islnk():
        return "is a link; only regular files are allowed"
    if not (info.isreg() or info.isdir()):
        return "is a device, fifo or other special file; only regular files are allowed"
    if info.name.startswith("/"):
        return "has an absolute name"
    if ".." in info.name.split("/"):
        return "has a name with '..' (path traversal)"
    return None


def open_tar(fileobj: IO[bytes], compressed: bool) -> tarfile.TarFile:
    return tarfile.open(fileobj=fileobj, mode="r:gz" if compressed else "r:")


def scan_tar(fileobj: IO[bytes], shard: str, *, compressed: bool = False, size: int | None = None) -> dict[str, list]:
    """The sample table of one shard, checked: adjacent keys, keyed members, safe names, complete data."""
    table: dict[str, list] = {c: [] for c in COLUMNS}
    seen: set[str] = set()
    last: str | None = None
    try:
        with open_tar(fileobj, compressed) as tar:
            for info in tar:
                reason = unsafe_reason(info)
                if reason:
                    raise InvalidInput(f"{shard}: member {info.name!r} {reason}")
                if info.isdir() or is_meta(info.name):
                    continue
                parts = split_name(info.name)
                if parts is None:
                    raise InvalidInput(f"{shard}: member {info.name!r} has no key (expected a name like KEY.EXT)")
                key, ext = parts
                if size is not None and info.offset_data + info.size > size:
                    raise InvalidInput(f"{shard}: truncated; member {info.name!r} ends past the end of the file")
                if key != last:
                    if key in seen:
                        raise InvalidInput(
                            f"{shard}: sample key {key!r} appears again after other samples; "
                            "the members of a sample must be adjacent"
                        )
                    seen.add(key)
                    last = key
                    _append_sample(table, key)
                elif ext in table["exts"][-1]:
                    raise InvalidInput(f"{shard}: sample key {key!r} has member {ext!r} twice")
                table["exts"][-1].append(ext)
                table["offsets"][-1].append(info.offset_data)
                table["sizes"][-1].append(info.size)
                table["nbytes"][-1] += info.size
            _check_end_marker(tar, shard)
    except InvalidInput:
        raise
    except (tarfile.TarError, EOFError, OSError) as e:
        raise InvalidInput(f"{shard}: not a readable tar file ({type(e).__name__}: {e})") from None
    return table


def _check_end_marker(tar: tarfile.TarFile, shard: str) -> None:
    """tarfile stops quietly at a cut or damaged header; a complete tar ends with a zero block there."""
    tar.fileobj.seek(tar.offset)
    if tar.fileobj.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
        raise InvalidInput(f"{shard}: truncated or damaged at byte {tar.offset} (no end-of-archive marker there)")


def _append_sample(table: dict[str, list], key: str) -> None:
    table["key"].append(key)
    table["ordinal"].append(len(table["ordinal"]))
    table["exts"].append([])
    table["offsets"].append([])
    table["sizes"].append([])
    table["nbytes"].append(0)


def summarize(table: dict[str, Any], examples: int = 5) -> dict[str, Any]:
    """Counts a driver may hold: samples, payload bytes, how often each extension occurs, first keys."""
    ext_counts: dict[str, int] = {}
    for exts in table["exts"]:
        for e in exts:
            ext_counts[e] = ext_counts.get(e, 0) + 1
    return {
        "samples": len(table["key"]),
        "bytes": int(sum(table["nbytes"])),
        "extensions": ext_counts,
        "first_keys": list(table["key"][:examples]),
    }
