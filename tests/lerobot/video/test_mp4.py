"""The mp4 sample table read from the `moov` box alone equals what FFmpeg demuxes: every packet's decode and
presentation time, keyframe flag, offset and size, for every encoder and for raymerge's own remuxed files."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from raymerge.lerobot.video import mp4
from raymerge.lerobot.video.probe import gop_index, probe
from raymerge.lerobot.video.remux import Segment, concat
from tests.lerobot.video.util import ENCODERS, LOCAL, make


def table_of(path: str) -> mp4.Samples:
    data = Path(path).read_bytes()
    reads: list[tuple[int, int]] = []

    def read(a: int, b: int) -> bytes:
        reads.append((a, b))
        return data[a:b]

    found = mp4.locate_moov(read, len(data))
    assert found is not None
    start, end, _, moov = found
    assert end == len(data) and sum(b - a for a, b in reads) < 200 + (end - start), "only headers and moov read"
    table = mp4.samples(moov)
    assert table is not None
    return table


def demuxed(path: str) -> np.ndarray:
    with av.open(path) as c:
        s = c.streams.video[0]
        return np.array([(p.dts, p.pts, p.is_keyframe, p.pos, p.size) for p in c.demux(s) if p.size], dtype=np.int64)


def assert_same(table: mp4.Samples, packets: np.ndarray) -> None:
    np.testing.assert_array_equal(table.dts, packets[:, 0])
    np.testing.assert_array_equal(table.pts, packets[:, 1])
    np.testing.assert_array_equal(table.key, packets[:, 2].astype(bool))
    np.testing.assert_array_equal(table.pos, packets[:, 3])
    np.testing.assert_array_equal(table.size, packets[:, 4])


@pytest.mark.parametrize("encoder", ENCODERS)
def test_sample_table_equals_the_demuxed_packets(tmp_path, encoder):
    path = make(tmp_path, "a.mp4", 23, 1, gop=4, codec=encoder)
    table = table_of(path)
    assert_same(table, demuxed(path))
    assert table.frame_ticks * 10 == table.timescale
    # and of a remux mixing copied and re-encoded groups (decode times rewritten one frame apart)
    out = str(tmp_path / "cut.mp4")
    concat([Segment(LOCAL, path, 0.3, 1.9), Segment(LOCAL, path, 0.0, 0.8)], LOCAL, out)
    assert_same(table_of(out), demuxed(out))


def test_groups_of_pictures_from_the_table_equal_the_demuxed_ones(tmp_path):
    from raymerge.lerobot.video.probe import _gop_index

    path = make(tmp_path, "a.mp4", 30, 2, gop=5)
    table = table_of(path)
    with av.open(path) as c:
        s = c.streams.video[0]
        rate = s.guessed_rate
        fast = gop_index(table, s.time_base, rate)
        slow, count = _gop_index(c, s, rate)
    assert slow is not None and count == len(table)
    np.testing.assert_array_equal(fast.groups, slow.groups)
    np.testing.assert_array_equal(fast.unsafe, slow.unsafe)
    info = probe(LOCAL, path, index=True)
    assert info.frames == 30 and info.duration_s == pytest.approx(3.0)


def test_not_an_mp4_has_no_table(tmp_path):
    data = b"\x00\x00\x00\x10notabox" + bytes(100)
    assert mp4.locate_moov(lambda a, b: data[a:b], len(data)) is None
    assert mp4.samples(b"\x00\x00\x00\x08moov") is None
