"""LeRobot video handling on real mp4 files encoded by the tests: probing, remux concatenation with
exact timestamps, keyframe-aware cuts, re-encoding only what must be, copies, and S3 on both ends."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import av
import fsspec
import numpy as np
import pytest

from raymerge.errors import InvalidInput
from raymerge.lerobot import video
from raymerge.lerobot.video import Placed, Segment
from tests.helpers import tree_digest

os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only
FPS = 10
LOCAL = fsspec.filesystem("file")
# LeRobot's default tolerance: a timestamp must name a frame's time almost exactly.
STRICT = 1e-4
ENCODERS = [e for e in ("libx264", "libsvtav1") if video.available_encoder(e)]


def frames(n: int, seed: int, height: int = 24, width: int = 32) -> np.ndarray:
    """Smooth moving gradients: compress well, differ per frame and per seed."""
    t = np.arange(n)[:, None, None]
    y = np.arange(height)[None, :, None]
    x = np.arange(width)[None, None, :]
    base = (x * 4 + y * 3 + t * 9 + seed * 50) % 256
    return np.stack([base, (base * 2 + seed * 30) % 256, 255 - base], axis=-1).astype(np.uint8)


def make(tmp: Path, name: str, n: int, seed: int, *, gop: int = 5, codec: str | None = None, **size) -> str:
    path = str(tmp / name)
    video.encode(frames(n, seed, **size), FPS, LOCAL, path, codec=codec, gop=gop)
    return path


def keyframe_times(path: str) -> list[float]:
    with av.open(path) as c:
        s = c.streams.video[0]
        return sorted(float(p.pts * s.time_base) for p in c.demux(s) if p.size and p.is_keyframe)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def spots(n: int) -> list[int]:
    """Frame indices at the start, middle and end of a segment of n frames."""
    return sorted({0, 1, n // 2, n - 2, n - 1})


def assert_frames_equal(src: str, src_start: float, out: str, placed: Placed, n: int, fs=LOCAL, out_fs=LOCAL) -> None:
    """Frames read as LeRobot does (from_timestamp + float32 timestamp) equal the source's decoded frames."""
    idx = spots(n)
    ts = [float(np.float32(i / FPS)) for i in idx]
    expected = video.decode_at(fs, src, [src_start + t for t in ts], tolerance_s=STRICT)
    got = video.decode_at(out_fs, out, [placed.from_timestamp + t for t in ts], tolerance_s=STRICT)
    assert np.array_equal(expected, got), f"frames {idx} of {src} differ in {out}"


def test_default_encoder_and_encode_probe(tmp_path):
    assert video.default_encoder() in ("libx264", "libopenh264", "libsvtav1", "libaom-av1")
    path = make(tmp_path, "a.mp4", 23, 0, gop=4)
    info = video.probe(LOCAL, path)
    assert (info.codec, info.pix_fmt, info.width, info.height) == ("h264", "yuv420p", 32, 24)
    assert (info.fps, info.frames) == (FPS, 23)
    video_length_s = info.duration_s  # the stream's length (23 frames at 10 fps), not a wall-clock time
    assert video_length_s == pytest.approx(23 / FPS)
    assert len(info.extradata) == 64


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("gop", [3, 7])
def test_encode_honours_gop(tmp_path, encoder, gop):
    path = make(tmp_path, "a.mp4", 20, 1, gop=gop, codec=encoder)
    assert keyframe_times(path) == pytest.approx([i / FPS for i in range(0, 20, gop)])
    assert video.probe(LOCAL, path).codec == {"libx264": "h264", "libsvtav1": "av1"}[encoder]


def test_encode_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        video.encode(np.zeros((2, 24, 32, 3), np.float32), FPS, LOCAL, str(tmp_path / "x.mp4"))
    assert not (tmp_path / "x.mp4").exists()


def test_incompatibilities_names_each_difference():
    a = video.StreamInfo("h264", "yuv420p", 32, 24, 10.0, 5, 0.5, "aa")
    b = video.StreamInfo("av1", "yuv420p", 64, 24, 10.0, 9, 0.9, "bb")
    assert video.incompatibilities(a, b) == ["codec h264 != av1", "width 32 != 64"]
    assert video.incompatibilities(a, a) == []
    assert video.incompatibilities(a, b, remux=True)[-1].startswith("codec parameters (extradata sha256) aa != bb")


def test_probe_bad_files(tmp_path):
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 10)
    with pytest.raises(InvalidInput, match=r"junk\.mp4: not a readable video file"):
        video.probe(LOCAL, str(tmp_path / "junk.mp4"))
    with pytest.raises(InvalidInput, match=r"gone\.mp4: video file not found"):
        video.probe(LOCAL, str(tmp_path / "gone.mp4"))


@pytest.mark.parametrize("encoder", ENCODERS)
def test_concat_whole_files_copies_every_frame(tmp_path, encoder):
    lengths = [17, 6, 12]
    srcs = [make(tmp_path, f"ep{i}.mp4", n, i, gop=4, codec=encoder) for i, n in enumerate(lengths)]
    before = tree_digest(tmp_path)
    segments = [Segment(LOCAL, p, 0.0, video.probe(LOCAL, p).duration_s) for p in srcs]
    out = str(tmp_path / "out" / "file-000.mp4")
    placed = video.concat(segments, LOCAL, out)

    assert [p.reencoded for p in placed] == [False, False, False]
    assert placed[0].from_timestamp == 0.0
    for prev, nxt in itertools.pairwise(placed):
        assert nxt.from_timestamp == pytest.approx(prev.to_timestamp, abs=1e-9)
    for p, n in zip(placed, lengths, strict=True):
        assert p.to_timestamp - p.from_timestamp == pytest.approx(n / FPS, abs=1e-9)
    for src, p, n in zip(srcs, placed, lengths, strict=True):
        assert_frames_equal(src, 0.0, out, p, n)
    info = video.probe(LOCAL, out)
    assert info.frames == sum(lengths)
    assert info.extradata == video.probe(LOCAL, srcs[0]).extradata
    assert tree_digest(tmp_path / "out") and {k: v for k, v in tree_digest(tmp_path).items() if k in before} == before


def test_concat_subsegments_on_keyframes_are_copied(tmp_path):
    src = make(tmp_path, "file.mp4", 30, 3, gop=5)
    cuts = [(1.0, 2.0), (0.0, 0.5), (2.5, 3.0)]
    out = str(tmp_path / "cut.mp4")
    placed = video.concat([Segment(LOCAL, src, a, b) for a, b in cuts], LOCAL, out)
    assert [p.reencoded for p in placed] == [False, False, False]
    assert [round(p.from_timestamp, 9) for p in placed] == [0.0, 1.0, 1.5]
    for (a, b), p in zip(cuts, placed, strict=True):
        assert_frames_equal(src, a, out, p, round((b - a) * FPS))
    assert video.probe(LOCAL, out).frames == 20


@pytest.mark.parametrize("encoder", ENCODERS)
def test_concat_subsegment_off_keyframe_is_reencoded_alone(tmp_path, encoder):
    src = make(tmp_path, "file.mp4", 30, 4, gop=10, codec=encoder)
    # 1.3 is mid-GOP; 2.0 opens a GOP and runs to the end of the file; 1.0 opens a GOP that ends whole.
    cuts = [(1.3, 1.9), (2.0, 3.0), (1.0, 2.0)]
    out = str(tmp_path / "cut.mp4")
    placed = video.concat([Segment(LOCAL, src, a, b) for a, b in cuts], LOCAL, out)
    assert [p.reencoded for p in placed] == [True, False, False]
    assert [round(p.to_timestamp - p.from_timestamp, 9) for p in placed] == [0.6, 1.0, 1.0]

    n = 6
    ts = [i / FPS for i in range(n)]
    expected = video.decode_at(LOCAL, src, [1.3 + t for t in ts], tolerance_s=STRICT)
    got = video.decode_at(LOCAL, out, [placed[0].from_timestamp + t for t in ts], tolerance_s=STRICT)
    assert got.shape == expected.shape == (n, 24, 32, 3)
    assert psnr(expected, got) > 30
    # frames land in order: each re-encoded frame is closest to its own source frame
    for i in range(n):
        assert int(np.argmax([psnr(expected[j], got[i]) for j in range(n)])) == i
    for (a, b), p in zip(cuts[1:], placed[1:], strict=True):
        assert_frames_equal(src, a, out, p, round((b - a) * FPS))
    assert video.probe(LOCAL, out).frames == 26


@pytest.mark.parametrize("encoder", ENCODERS)
def test_long_cut_segment_reencodes_only_its_cut_groups(tmp_path, encoder):
    """A segment that starts and ends inside groups of pictures: only those two groups are re-encoded,
    every whole group in between is copied bit-exactly."""
    src = make(tmp_path, "file.mp4", 30, 7, gop=5, codec=encoder)
    out = str(tmp_path / "cut.mp4")
    (placed,) = video.concat([Segment(LOCAL, src, 0.7, 2.2)], LOCAL, out)
    assert placed.reencoded and placed.from_timestamp == 0.0
    assert placed.to_timestamp == pytest.approx(1.5, abs=1e-9)
    ts = [i / FPS for i in range(15)]
    expected = video.decode_at(LOCAL, src, [0.7 + t for t in ts], tolerance_s=STRICT)
    got = video.decode_at(LOCAL, out, ts, tolerance_s=STRICT)
    copied = slice(3, 13)  # source frames 10..19: the two whole groups [1.0, 1.5) and [1.5, 2.0)
    assert np.array_equal(expected[copied], got[copied])
    assert psnr(expected[:3], got[:3]) > 30 and psnr(expected[13:], got[13:]) > 30
    assert video.probe(LOCAL, out).frames == 15


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
    (placed,) = video.concat([Segment(LOCAL, src, start, start + n / FPS)], LOCAL, out)
    assert placed.reencoded and placed.from_timestamp == 0.0
    assert shown_times(out) == pytest.approx([i / FPS for i in range(n)], abs=1e-9)
    ts = [float(np.float32(i / FPS)) for i in range(head, n)]
    expected = video.decode_at(LOCAL, src, [start + t for t in ts], tolerance_s=STRICT)
    got = video.decode_at(LOCAL, out, ts, tolerance_s=STRICT)
    assert np.array_equal(expected, got)  # the copied groups, bit-exact at their own times


def test_concat_of_concatenated_files(tmp_path):
    """Inputs that are themselves merges: many episodes per file, several files per camera."""
    lengths = [10, 5, 15, 10]
    srcs = [make(tmp_path, f"ep{i}.mp4", n, 10 + i, gop=5) for i, n in enumerate(lengths)]
    whole = [Segment(LOCAL, p, 0.0, n / FPS) for p, n in zip(srcs, lengths, strict=True)]
    file_a, file_b = str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")
    placed_a = video.concat(whole[:2], LOCAL, file_a)
    placed_b = video.concat(whole[2:], LOCAL, file_b)

    # Episodes in a new order across both files, as a merge of two v3.0 datasets would take them.
    order = [(file_b, placed_b[1], 3), (file_a, placed_a[0], 0), (file_b, placed_b[0], 2), (file_a, placed_a[1], 1)]
    out = str(tmp_path / "merged.mp4")
    placed = video.concat([Segment(LOCAL, f, p.from_timestamp, p.to_timestamp) for f, p, _ in order], LOCAL, out)
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
        video.concat([Segment(LOCAL, a, 0, 1), Segment(LOCAL, b, 0, 1)], LOCAL, str(out))
    message = str(err.value)
    assert "small.mp4" in message and "big.mp4" in message
    assert "width 32 != 64" in message and "height 24 != 48" in message
    assert not out.exists()
    assert tree_digest(tmp_path) == before


OTHER_X264 = {"x264-params": "cabac=0:bframes=0:ref=1:keyint=5:min-keyint=5:scenecut=0"}


def make_other_x264(tmp: Path, name: str, n: int, seed: int, options: dict[str, str] = OTHER_X264) -> str:
    """An h264 file from other x264 settings than `video.encode` uses: other SPS/PPS (extradata)."""
    path = str(tmp / name)
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = 32, 24, "yuv420p"
        s.codec_context.options = options
        for i, f in enumerate(frames(n, seed)):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts = i
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return path


def test_concat_differing_codec_parameters_is_refused(tmp_path):
    """Same codec and size, other encoder settings: one mp4 track cannot hold both."""
    a = make(tmp_path, "a.mp4", 10, 0)
    b = make_other_x264(tmp_path, "b.mp4", 10, 1)
    assert video.incompatibilities(video.probe(LOCAL, a), video.probe(LOCAL, b)) == []
    assert video.incompatibilities(video.probe(LOCAL, a), video.probe(LOCAL, b), remux=True) != []
    out = tmp_path / "out.mp4"
    with pytest.raises(
        InvalidInput, match=r"a\.mp4 and .*b\.mp4 cannot be concatenated without re-encoding: extradata"
    ):
        video.concat([Segment(LOCAL, a, 0, 1), Segment(LOCAL, b, 0, 1)], LOCAL, str(out))
    assert not out.exists()


def test_concat_reencodes_whole_file_when_reencoder_headers_differ(tmp_path):
    """A mid-GOP cut of a file from other encoder settings: the re-encoded segment cannot share a track
    with the copied one, so the whole output is re-encoded, frames still in place."""
    src = make_other_x264(tmp_path, "other.mp4", 15, 2)
    cuts = [(0.0, 0.5), (0.7, 1.5)]
    out = str(tmp_path / "out.mp4")
    placed = video.concat([Segment(LOCAL, src, a, b) for a, b in cuts], LOCAL, out)
    assert [p.reencoded for p in placed] == [True, True]
    assert [round(p.from_timestamp, 9) for p in placed] == [0.0, 0.5]
    assert video.probe(LOCAL, out).extradata != video.probe(LOCAL, src).extradata
    for (a, b), p in zip(cuts, placed, strict=True):
        ts = [i / FPS for i in range(round((b - a) * FPS))]
        expected = video.decode_at(LOCAL, src, [a + t for t in ts], tolerance_s=STRICT)
        got = video.decode_at(LOCAL, out, [p.from_timestamp + t for t in ts], tolerance_s=STRICT)
        assert psnr(expected, got) > 30


def test_reencoded_group_matches_a_preset_source(tmp_path):
    """A source from a standard x264 preset and crf: the re-encoder finds the same settings, so only the
    cut group is re-encoded and the rest is still copied into the source's track."""
    src = make_other_x264(tmp_path, "fast.mp4", 20, 3, {"preset": "ultrafast", "crf": "30", "g": "5"})
    out = str(tmp_path / "out.mp4")
    placed = video.concat([Segment(LOCAL, src, 0.0, 1.0), Segment(LOCAL, src, 1.2, 2.0)], LOCAL, out)
    assert [p.reencoded for p in placed] == [False, True]
    assert video.probe(LOCAL, out).extradata == video.probe(LOCAL, src).extradata
    assert_frames_equal(src, 0.0, out, placed[0], 10)
    ts = [i / FPS for i in range(8)]
    expected = video.decode_at(LOCAL, src, [1.2 + t for t in ts], tolerance_s=STRICT)
    got = video.decode_at(LOCAL, out, [placed[1].from_timestamp + t for t in ts], tolerance_s=STRICT)
    assert np.array_equal(expected[3:], got[3:])  # the whole group [1.5, 2.0) is copied
    assert psnr(expected[:3], got[:3]) > 25


def test_concat_empty_segment_is_refused(tmp_path):
    a = make(tmp_path, "a.mp4", 10, 0)
    out = tmp_path / "out.mp4"
    with pytest.raises(InvalidInput, match=r"a\.mp4: no video frame in \[2\.000000s, 3\.000000s\)"):
        video.concat([Segment(LOCAL, a, 0, 1), Segment(LOCAL, a, 2.0, 3.0)], LOCAL, str(out))
    assert not out.exists()


def test_decode_at_picks_nearest_frame_within_tolerance(tmp_path):
    path = make(tmp_path, "a.mp4", 12, 5)
    exact = video.decode_at(LOCAL, path, [0.3, 0.4], tolerance_s=STRICT)
    # 0.33 is nearest to 0.3, 0.37 to 0.4: picked with the default half-frame tolerance, order kept.
    near = video.decode_at(LOCAL, path, [0.37, 0.33])
    assert np.array_equal(near, exact[::-1])
    assert not np.array_equal(exact[0], exact[1])
    with pytest.raises(InvalidInput, match=r"a\.mp4: no frame within 0\.000100s of timestamp 0\.330000"):
        video.decode_at(LOCAL, path, [0.33], tolerance_s=STRICT)
    with pytest.raises(InvalidInput, match=r"of timestamp 5\.000000"):
        video.decode_at(LOCAL, path, [0.0, 5.0])


def test_decode_at_far_apart_timestamps(tmp_path):
    """Timestamps seconds apart are served by seeking (B-frame stream, keyframes every 7 frames)."""
    path = make(tmp_path, "long.mp4", 80, 6, gop=7)
    ts = [7.9, 0.0, 3.5, 3.6, 6.1]
    got = video.decode_at(LOCAL, path, ts, tolerance_s=STRICT)
    with av.open(path) as c:
        everything = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert np.array_equal(got, np.stack([everything[round(t * FPS)] for t in ts]))


def test_copy_local(tmp_path):
    src = make(tmp_path, "a.mp4", 5, 0)
    dst = tmp_path / "x" / "y" / "a.mp4"
    video.copy(LOCAL, src, LOCAL, str(dst))
    assert dst.read_bytes() == Path(src).read_bytes()


def test_s3_sources_and_target(tmp_path, s3):
    fs, bucket = s3["fs"], s3["bucket"]
    lengths = [12, 8]
    remote = [f"{bucket}/videos/ep{i}.mp4" for i in range(2)]
    for i, (path, n) in enumerate(zip(remote, lengths, strict=True)):
        video.encode(frames(n, 20 + i), FPS, fs, path, gop=4)
    assert video.probe(fs, remote[0]).frames == 12

    out = f"{bucket}/merged/file-000.mp4"
    # second episode cut mid-GOP (re-encoded), the rest copied
    segments = [Segment(fs, remote[0], 0.0, 1.2), Segment(fs, remote[1], 0.2, 0.8), Segment(fs, remote[1], 0.0, 0.4)]
    placed = video.concat(segments, fs, out)
    assert [p.reencoded for p in placed] == [False, True, False]
    assert video.probe(fs, out).frames == 12 + 6 + 4
    assert_frames_equal(remote[0], 0.0, out, placed[0], 12, fs=fs, out_fs=fs)
    assert_frames_equal(remote[1], 0.0, out, placed[2], 4, fs=fs, out_fs=fs)

    local = str(tmp_path / "down" / "file.mp4")
    video.copy(fs, out, LOCAL, local)
    video.copy(LOCAL, local, fs, f"{bucket}/up/file.mp4")
    video.copy(fs, out, fs, f"{bucket}/server-side/file.mp4")
    data = fs.cat_file(out)
    assert Path(local).read_bytes() == data
    assert fs.cat_file(f"{bucket}/up/file.mp4") == data == fs.cat_file(f"{bucket}/server-side/file.mp4")


def test_s3_refused_concat_writes_nothing(s3):
    fs, bucket = s3["fs"], s3["bucket"]
    video.encode(frames(5, 0), FPS, fs, f"{bucket}/a.mp4")
    video.encode(frames(5, 0, height=48, width=64), FPS, fs, f"{bucket}/b.mp4")
    with pytest.raises(InvalidInput, match="width 32 != 64"):
        video.concat(
            [Segment(fs, f"{bucket}/a.mp4", 0, 0.5), Segment(fs, f"{bucket}/b.mp4", 0, 0.5)], fs, f"{bucket}/o.mp4"
        )
    assert sorted(fs.ls(bucket)) == [f"{bucket}/a.mp4", f"{bucket}/b.mp4"]
