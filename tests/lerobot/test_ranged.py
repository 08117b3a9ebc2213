"""Ranged reads: a read fetches what it asks for, a planned range is fetched in large pieces, and every byte
is the file's."""

from __future__ import annotations

import io

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from raymerge.lerobot import ranged


class Counting(MemoryFileSystem):
    """An in-memory filesystem that records every ranged read."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads: list[tuple[int, int]] = []

    def cat_file(self, path, start=None, end=None, **kwargs):
        self.reads.append((start, end))
        return super().cat_file(path, start=start, end=end, **kwargs)


@pytest.fixture
def fs():
    f = Counting(skip_instance_cache=True)
    f.store.clear()
    f.pipe("/f.bin", bytes(range(256)) * 4096)  # 1 MiB
    return f


def test_reads_fetch_what_they_ask(fs):
    r = ranged.RangedFile(fs, "/f.bin", 1 << 20)
    r.seek(1000)
    assert r.read(10) == (bytes(range(256)) * 8)[1000:1010]
    r.seek(-4, io.SEEK_END)
    assert r.read(100) == bytes([252, 253, 254, 255])
    assert fs.reads == [(1000, 1010), ((1 << 20) - 4, 1 << 20)]
    r.seek(1002)
    assert r.read(4) == bytes(range(256))[1002 - 768 : 1006 - 768]
    assert len(fs.reads) == 2, "served from what was fetched"


def test_planned_range_is_fetched_in_pieces(fs, monkeypatch):
    monkeypatch.setattr(ranged, "PIECE", 100_000)
    r = ranged.RangedFile(fs, "/f.bin", 1 << 20)
    r.plan([(50_000, 300_000)])
    r.seek(46_000)
    data = b"".join(r.read(4000) for _ in range(64))  # as a demuxer reads: 4 000 unplanned bytes, then planned
    assert data == fs.cat_file("/f.bin", 46_000, 302_000)
    assert fs.reads[:-1] == [
        (46_000, 50_000),
        (50_000, 150_000),
        (150_000, 250_000),
        (250_000, 300_000),
        (300_000, 302_000),
    ]


def test_size_from_the_filesystem_when_not_given(fs):
    assert ranged.RangedFile(fs, "/f.bin").size == 1 << 20


def test_reading_a_range_leaves_the_position(fs):
    """A demuxer reading through the file must not see its position moved by a side read."""
    r = ranged.RangedFile(fs, "/f.bin", 1 << 20, short_reads=True)
    r.seek(5000)
    assert r.range(100, 9000) == fs.cat_file("/f.bin", 100, 9000)
    assert r.tell() == 5000
    assert r.read(3) == fs.cat_file("/f.bin", 5000, 5003)
