"""Tars built for the tests, and outputs read back for byte-for-byte checks."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def read_samples(folder: Path) -> list[tuple[str, str, list[tuple[str, bytes]]]]:
    """(shard, key, [(member name, bytes)]) in file order over the shards in name order."""
    out: list[tuple[str, str, list[tuple[str, bytes]]]] = []
    for tar_path in sorted(folder.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar:
                key, _ = m.name.split("/")[-1].split(".", 1)
                key = "/".join([*m.name.split("/")[:-1], key])
                data = tar.extractfile(m).read()
                if out and out[-1][0] == tar_path.name and out[-1][1] == key:
                    out[-1][2].append((m.name, data))
                else:
                    out.append((tar_path.name, key, [(m.name, data)]))
    return out


def headers(tar_path: Path) -> list[tarfile.TarInfo]:
    """Every member header of a tar, as `tarfile` reads it."""
    with tarfile.open(tar_path) as tar:
        return tar.getmembers()


def tar_bytes(members: list[tuple[str, bytes, bytes]], fmt: int) -> bytes:
    """(name, type, payload) members written by tarfile in the given format."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.type, info.mtime = kind, 1_700_000_000
            info.size = len(payload) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(payload) if info.size else None)
    return buf.getvalue()


def header_inside() -> bytes:
    """A payload that holds a valid tar header (of `inner.jpg`) on a block boundary, and its data."""
    return bytes(512) + tar_bytes([("inner.jpg", tarfile.REGTYPE, b"i" * 600)], tarfile.USTAR_FORMAT)[:2048]
