"""Small generated WebDataset folders for tests, the demo configs and the benchmark (never downloaded)."""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

Sample = tuple[str, dict[str, bytes]]


def payload(key: str, ext: str, size: int) -> bytes:
    """Deterministic random-looking bytes for a member (incompressible, like encoded images)."""
    return random.Random(f"{key}.{ext}").randbytes(size)


def write_tar(path: Path, samples: Iterable[Sample], *, compressed: bool = False) -> None:
    """One shard as WebDataset writers make it: ustar headers, a sample's members adjacent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz" if compressed else "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime = len(data), 1_700_000_000
                tar.addfile(info, io.BytesIO(data))


def write_shards(
    root: Path, samples: Sequence[Sample], shards: int, *, name: str = "shard-%05d.tar", compressed: bool = False
) -> list[Path]:
    """`samples` in order, cut into `shards` tars of nearly equal size."""
    per = -(-len(samples) // shards)
    paths = []
    for i in range(shards):
        path = root / (name % i)
        write_tar(path, samples[i * per : (i + 1) * per], compressed=compressed)
        paths.append(path)
    return paths


def image_samples(keys: Sequence[str], size: int = 300) -> list[Sample]:
    """A primary-like dataset: an incompressible `jpg` of `size` bytes and a class label per key."""
    return [(k, {"jpg": payload(k, "jpg", size), "cls": str(i % 10).encode()}) for i, k in enumerate(keys)]


def caption_samples(keys: Sequence[str]) -> list[Sample]:
    """A secondary with a small `txt` per key, to join onto images."""
    return [(k, {"txt": f"a caption for {k}".encode()}) for k in keys]


def meta_samples(keys: Sequence[str], ext: str = "json") -> list[Sample]:
    """A secondary with a small JSON member per key, to join onto images."""
    return [(k, {ext: json.dumps({"key": k, "score": len(k)}).encode()}) for k in keys]


def keys(n: int, pattern: str = "part_{part}/{i:06d}", parts: int = 2) -> list[str]:
    """Directory-prefixed keys like `part_a/000123`."""
    return [pattern.format(part="abcdefgh"[i % parts], i=i) for i in range(n)]


def shuffled(items: Sequence, seed: int = 1) -> list:
    """A seeded permutation: secondaries whose key order differs from the primary's."""
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def demo(root: Path | str = "demo-data/webdataset", n: int = 200) -> dict[str, Path]:
    """The folders the `configs/webdataset-*.yaml` examples read."""
    root = Path(root)
    k = keys(n)
    made: dict[str, Callable[[], list[Path]]] = {
        "images": lambda: write_shards(root / "images", image_samples(k), 4),
        "captions": lambda: write_shards(
            root / "captions", caption_samples(shuffled([x for i, x in enumerate(k) if i % 20 != 7])), 3
        ),
        "meta": lambda: write_shards(root / "meta", meta_samples(shuffled(k[::2], 2)), 2),
        "more_images": lambda: write_shards(root / "more_images", image_samples(keys(n // 2, "extra/{i:06d}")), 2),
    }
    for build in made.values():
        build()
    return {name: root / name for name in made}


if __name__ == "__main__":
    print(demo())
