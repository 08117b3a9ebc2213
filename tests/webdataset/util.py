"""Reading outputs back for byte-for-byte checks."""

from __future__ import annotations

import tarfile
from pathlib import Path

from raymerge.webdataset.samples import Sample


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


def by_key(samples: list[Sample]) -> dict[str, dict[str, bytes]]:
    return dict(samples)


def headers(tar_path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(tar_path) as tar:
        return tar.getmembers()
