"""Remux concatenation on real mp4 files: exact timestamps, keyframe-aware cuts, re-encoding only what must be."""

from __future__ import annotations

import itertools

import av
import numpy as np
import pytest

from raymerge.errors import InvalidInput
from raymerge.lerobot.video.decode import decode_at
from raymerge.lerobot.video.probe import incompatibilities, probe
from raymerge.lerobot.video.remux import Segment, concat
from tests.helpers import tree_digest
from tests.lerobot.video.util import (
    ENCODERS,
    FPS,
    LOCAL,
    STRICT,
    assert_frames_equal,
    make,
    make_other_x264,
    psnr,
)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_concat_whole_files_copies_every_frame(tmp_path, encoder):
    lengths = [17, 6, 12]
    srcs = [make(tmp_path, f"ep{i}.mp4", n, i, gop=4, codec=encoder) for i, n in enumerate(lengths)]
    before = tree_digest(tmp_path)
    segments = [Segment(LOCAL, p, 0.0, probe(LOCAL, p).duration_s) for p in srcs]
    out = str(tmp_path / "out" / "file-000.mp4")
    placed = concat(segments, LOCAL, out)

    assert [p.reencoded for p in placed] == [False, False, False]
    assert placed[0].from_timestamp == 0.0
    for prev, nxt in itertools.pairwise(placed):
        assert nxt.from_timestamp == pytest.approx(prev.to_timestamp, abs=1e-9)
    for p, n in zip(placed, lengths, strict=True):
        assert p.to_timestamp - p.from_timestamp == pytest.approx(n / FPS, abs=1e-9)
    for src, p, n in zip(srcs, placed, lengths, strict=True):
        assert_frames_equal(src, 0.0, out, p, n)
    info = probe(LOCAL, out)
    assert info.frames == sum(lengths)
    assert info.extradata == probe(LOCAL, srcs[0]).extradata
    assert tree_digest(tmp_path / "out") and {k: v for k, v in tree_digest(tmp_path).items() if k in before} == before


def test_concat_subsegments_on_keyframes_are_copied(tmp_path):
    src = make(tmp_path, "file.mp4", 30, 3, gop=5)
    cuts = [(1.0, 2.0), (0.0, 0.5), (2.5, 3.0)]
    out = str(tmp_path / "cut.mp4")
    placed = concat([Segment(LOCAL, src, a, b) for a, b in cuts], LOCAL, out)
    assert [p.reencoded for p in placed] == [False, False, False]
    assert [round(p.from_timestamp, 9) for p in placed] == [0.0, 1.0, 1.5]
    for (a, b), p in zip(cuts, placed, strict=True):
        assert_frames_equal(src, a, out, p, round((b - a) * FPS))
    assert probe(LOCAL, out).frames == 20


@pytest.mark.parametrize("encoder", ENCODERS)
def test_concat_subsegment_off_keyframe_is_reencoded_alone(tmp_path, encoder):
    src = make(tmp_path, "file.mp4", 30, 4, gop=10, codec=encoder)
    # 1.3 is mid-GOP; 2.0 opens a GOP and runs to the end of the file; 1.0 opens a GOP that ends whole.
    cuts = [(1.3, 1.9), (2.0, 3.0), (1.0, 2.0)]
    out = str(tmp_path / "cut.mp4")
    placed = concat([Segment(LOCAL, src, a, b) for a, b in cuts], LOCAL, out)
    assert [p.reencoded for p in placed] == [True, False, False]
    assert [round(p.to_timestamp - p.from_timestamp, 9) for p in placed] == [0.6, 1.0, 1.0]

    n = 6
    ts = [i / FPS for i in range(n)]
    expected = decode_at(LOCAL, src, [1.3 + t for t in ts], tolerance_s=STRICT)
    got = decode_at(LOCAL, out, [placed[0].from_timestamp + t for t in ts], tolerance_s=STRICT)
    assert got.shape == expected.shape == (n, 24, 32, 3)
    assert psnr(expected, got) > 30
    # frames land in order: each re-encoded frame is closest to its own source frame
    for i in range(n):
        assert int(np.argmax([psnr(expected[j], got[i]) for j in range(n)])) == i
    for (a, b), p in zip(cuts[1:], placed[1:], strict=True):
        assert_frames_equal(src, a, out, p, round((b - a) * FPS))
    assert probe(LOCAL, out).frames == 26


@pytest.mark.parametrize("encoder", ENCODERS)
def test_long_cut_segment_reencodes_only_its_cut_groups(tmp_path, encoder):
    """A segment that starts and ends inside groups of pictures: only those two groups are re-encoded,
    every whole group in between is copied bit-exactly."""
    src = make(tmp_path, "file.mp4", 30, 7, gop=5, codec=encoder)
    out = str(tmp_path / "cut.mp4")
    (placed,) = concat([Segment(LOCAL, src, 0.7, 2.2)], LOCAL, out)
    assert placed.reencoded and placed.from_timestamp == 0.0
    assert placed.to_timestamp == pytest.approx(1.5, abs=1e-9)
    ts = [i / FPS for i in range(15)]
    expected = decode_at(LOCAL, src, [0.7 + t for t in ts], tolerance_s=STRICT)
    got = decode_at(LOCAL, out, ts, tolerance_s=STRICT)
    copied = slice(3, 13)  # source frames 10..19: the two whole groups [1.0, 1.5) and [1.5, 2.0)
    assert np.array_equal(expected[copied], got[copied])
    assert psnr(expected[:3], got[:3]) > 30 and psnr(expected[13:], got[13:]) > 30
    assert probe(LOCAL, out).frames == 15


def shown_times(path: str) -> list[float]:
    with av.open(path) as c:
        s = c.streams.video[0]
        return sorted(float(p.pts * s.time_base) for p in c.demux(s) if p.size)


def has_reordering(path: str) -> bool:
    """Whether some frame is decoded before an earlier-shown one (B-frames)."""
    with av.open(path) as c:
        s = c.streams.video[0]
        pts = [p.pts for p in c.demux(s) if p.size]
    return pts != sorted(pts)


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("head", [1, 2, 3])
def test_copied_groups_follow_a_reencoded_head_without_a_gap(tmp_path, encoder, head):
    """A segment starting `head` frames before a keyframe: its re-encoded head is followed by copied groups
    whose frames show exactly one frame later each, with and without B-frames in the source."""
    src = make(tmp_path, "file.mp4", 24, 3, gop=4, codec=encoder)
    assert has_reordering(src) == (encoder == "libx264")  # both cases really occur
    start, n = (8 - head) / FPS, head + 12
    out = str(tmp_path / "cut.mp4")
    (placed,) = concat([Segment(LOCAL, src, start, start + n / FPS)], LOCAL, out)
    assert placed.reencoded and placed.from_timestamp == 0.0
    assert shown_times(out) == pytest.approx([i / FPS for i in range(n)], abs=1e-9)
    ts = [float(np.float32(i / FPS)) for i in range(head, n)]
    expected = decode_at(LOCAL, src, [start + t for t in ts], tolerance_s=STRICT)
    got = decode_at(LOCAL, out, ts, tolerance_s=STRICT)
    assert np.array_equal(expected, got)  # the copied groups, bit-exact at their own times


def test_concat_of_concatenated_files(tmp_path):
    """Inputs that are themselves merges: many episodes per file, several files per camera."""
    lengths = [10, 5, 15, 10]
    srcs = [make(tmp_path, f"ep{i}.mp4", n, 10 + i, gop=5) for i, n in enumerate(lengths)]
    whole = [Segment(LOCAL, p, 0.0, n / FPS) for p, n in zip(srcs, lengths, strict=True)]
    file_a, file_b = str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")
    placed_a = concat(whole[:2], LOCAL, file_a)
    placed_b = concat(whole[2:], LOCAL, file_b)

    # Episodes in a new order across both files, as a merge of two v3.0 datasets would take them.
    order = [(file_b, placed_b[1], 3), (file_a, placed_a[0], 0), (file_b, placed_b[0], 2), (file_a, placed_a[1], 1)]
    out = str(tmp_path / "merged.mp4")
    placed = concat([Segment(LOCAL, f, p.from_timestamp, p.to_timestamp) for f, p, _ in order], LOCAL, out)
    assert not any(p.reencoded for p in placed)
    assert [round(p.from_timestamp, 9) for p in placed] == [0.0, 1.0, 2.0, 3.5]
    for (_, _, ep), p in zip(order, placed, strict=True):
        assert_frames_equal(srcs[ep], 0.0, out, p, lengths[ep])


def test_concat_incompatible_streams_is_refused(tmp_path):
    a = make(tmp_path, "small.mp4", 10, 0)
    b = make(tmp_path, "big.mp4", 10, 1, height=48, width=64)
    before = tree_digest(tmp_path)
    out = tmp_path / "out" / "file.mp4"
    with pytest.raises(InvalidInput) as err:
        concat([Segment(LOCAL, a, 0, 1), Segment(LOCAL, b, 0, 1)], LOCAL, str(out))
    message = str(err.value)
    assert "small.mp4" in message and "big.mp4" in message
    assert "width 32 != 64" in message and "height 24 != 48" in message
    assert not out.exists()
    assert tree_digest(tmp_path) == before


OTHER_X264 = {"x264-params": "cabac=0:bframes=0:ref=1:keyint=5:min-keyint=5:scenecut=0"}


def test_concat_differing_codec_parameters_is_refused(tmp_path):
    """Same codec and size, other encoder settings: one mp4 track cannot hold both."""
    a = make(tmp_path, "a.mp4", 10, 0)
    b = make_other_x264(tmp_path, "b.mp4", 10, 1)
    assert incompatibilities(probe(LOCAL, a), probe(LOCAL, b)) == []
    assert incompatibilities(probe(LOCAL, a), probe(LOCAL, b), remux=True) != []
    out = tmp_path / "out.mp4"
    with pytest.raises(
        InvalidInput, match=r"a\.mp4 and .*b\.mp4 cannot be concatenated without re-encoding: extradata"
    ):
        concat([Segment(LOCAL, a, 0, 1), Segment(LOCAL, b, 0, 1)], LOCAL, str(out))
    assert not out.exists()


def test_concat_reencodes_whole_file_when_reencoder_headers_differ(tmp_path):
    """A mid-GOP cut of a file from other encoder settings: the re-encoded segment cannot share a track
    with the copied one, so the whole output is re-encoded, frames still in place."""
    src = make_other_x264(tmp_path, "other.mp4", 15, 2)
    cuts = [(0.0, 0.5), (0.7, 1.5)]
    out = str(tmp_path / "out.mp4")
    placed = concat([Segment(LOCAL, src, a, b) for a, b in cuts], LOCAL, out)
    assert [p.reencoded for p in placed] == [True, True]
    assert [round(p.from_timestamp, 9) for p in placed] == [0.0, 0.5]
    assert probe(LOCAL, out).extradata != probe(LOCAL, src).extradata
    for (a, b), p in zip(cuts, placed, strict=True):
        ts = [i / FPS for i in range(round((b - a) * FPS))]
        expected = decode_at(LOCAL, src, [a + t for t in ts], tolerance_s=STRICT)
        got = decode_at(LOCAL, out, [p.from_timestamp + t for t in ts], tolerance_s=STRICT)
        assert psnr(expected, got) > 30


def test_reencoded_group_matches_a_preset_source(tmp_path):
    """A source from a standard x264 preset and crf: the re-encoder finds the same settings, so only the
    cut group is re-encoded and the rest is still copied into the source's track."""
    src = make_other_x264(tmp_path, "fast.mp4", 20, 3, {"preset": "ultrafast", "crf": "30", "g": "5"})
    out = str(tmp_path / "out.mp4")
    placed = concat([Segment(LOCAL, src, 0.0, 1.0), Segment(LOCAL, src, 1.2, 2.0)], LOCAL, out)
    assert [p.reencoded for p in placed] == [False, True]
    assert probe(LOCAL, out).extradata == probe(LOCAL, src).extradata
    assert_frames_equal(src, 0.0, out, placed[0], 10)
    ts = [i / FPS for i in range(8)]
    expected = decode_at(LOCAL, src, [1.2 + t for t in ts], tolerance_s=STRICT)
    got = decode_at(LOCAL, out, [placed[1].from_timestamp + t for t in ts], tolerance_s=STRICT)
    assert np.array_equal(expected[3:], got[3:])  # the whole group [1.5, 2.0) is copied
    assert psnr(expected[:3], got[:3]) > 25


def test_concat_empty_segment_is_refused(tmp_path):
    a = make(tmp_path, "a.mp4", 10, 0)
    out = tmp_path / "out.mp4"
    with pytest.raises(InvalidInput, match=r"a\.mp4: no video frame in \[2\.000000s, 3\.000000s\)"):
        concat([Segment(LOCAL, a, 0, 1), Segment(LOCAL, a, 2.0, 3.0)], LOCAL, str(out))
    assert not out.exists()
