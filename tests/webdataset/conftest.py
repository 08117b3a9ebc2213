"""Generated inputs shared by the WebDataset tests: real tars, several shards each."""

from __future__ import annotations

from pathlib import Path

import pytest

from raymerge.webdataset import samples as S

N = 60


@pytest.fixture(scope="session")
def wds(tmp_path_factory) -> dict:
    """Primary images (`part_a/000123` keys, `seg.png` members) and two secondaries in shuffled key order:
    captions for all but every 7th key plus extra keys, JSON metadata for every other key."""
    root = tmp_path_factory.mktemp("wds")
    keys = S.keys(N)
    images = [(k, {**m, "seg.png": S.payload(k, "seg.png", 40 + i)}) for i, (k, m) in enumerate(S.image_samples(keys))]
    caption_keys = S.shuffled([k for i, k in enumerate(keys) if i % 7 != 3] + ["extra/000001", "extra/000002"])
    captions = S.caption_samples(caption_keys)
    meta = S.meta_samples(S.shuffled(keys[::2], 5))
    S.write_shards(root / "images", images, 3)
    S.write_shards(root / "captions", captions, 2, name="cap-%02d.tar")
    S.write_shards(root / "meta", meta, 2, name="sub/meta-%d.tar")
    return {
        "root": root,
        "keys": keys,
        "images": dict(images),
        "captions": dict(captions),
        "meta": dict(meta),
        "missing_captions": [k for i, k in enumerate(keys) if i % 7 == 3],
    }


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"
