"""Video files through fsspec: whole-file copies between local disk and S3, remux with S3 on both ends."""

from __future__ import annotations

from pathlib import Path

import pytest

from raymerge.errors import InvalidInput
from raymerge.lerobot.video.encode import encode
from raymerge.lerobot.video.io import copy
from raymerge.lerobot.video.probe import probe
from raymerge.lerobot.video.remux import Segment, concat
from tests.lerobot.video.util import FPS, LOCAL, assert_frames_equal, frames, make


def test_copy_local(tmp_path):
    src = make(tmp_path, "a.mp4", 5, 0)
    dst = tmp_path / "x" / "y" / "a.mp4"
    copy(LOCAL, src, LOCAL, str(dst))
    assert dst.read_bytes() == Path(src).read_bytes()


def test_s3_sources_and_target(tmp_path, s3):
    fs, bucket = s3["fs"], s3["bucket"]
    lengths = [12, 8]
    remote = [f"{bucket}/videos/ep{i}.mp4" for i in range(2)]
    for i, (path, n) in enumerate(zip(remote, lengths, strict=True)):
        encode(frames(n, 20 + i), FPS, fs, path, gop=4)
    assert probe(fs, remote[0]).frames == 12

    out = f"{bucket}/merged/file-000.mp4"
    # second episode cut mid-GOP (re-encoded), the rest copied
    segments = [Segment(fs, remote[0], 0.0, 1.2), Segment(fs, remote[1], 0.2, 0.8), Segment(fs, remote[1], 0.0, 0.4)]
    placed = concat(segments, fs, out)
    assert [p.reencoded for p in placed] == [False, True, False]
    assert probe(fs, out).frames == 12 + 6 + 4
    assert_frames_equal(remote[0], 0.0, out, placed[0], 12, fs=fs, out_fs=fs)
    assert_frames_equal(remote[1], 0.0, out, placed[2], 4, fs=fs, out_fs=fs)

    local = str(tmp_path / "down" / "file.mp4")
    copy(fs, out, LOCAL, local)
    copy(LOCAL, local, fs, f"{bucket}/up/file.mp4")
    copy(fs, out, fs, f"{bucket}/server-side/file.mp4")
    data = fs.cat_file(out)
    assert Path(local).read_bytes() == data
    assert fs.cat_file(f"{bucket}/up/file.mp4") == data == fs.cat_file(f"{bucket}/server-side/file.mp4")


def test_s3_refused_concat_writes_nothing(s3):
    fs, bucket = s3["fs"], s3["bucket"]
    encode(frames(5, 0), FPS, fs, f"{bucket}/a.mp4")
    encode(frames(5, 0, height=48, width=64), FPS, fs, f"{bucket}/b.mp4")
    with pytest.raises(InvalidInput, match="width 32 != 64"):
        concat([Segment(fs, f"{bucket}/a.mp4", 0, 0.5), Segment(fs, f"{bucket}/b.mp4", 0, 0.5)], fs, f"{bucket}/o.mp4")
    assert sorted(fs.ls(bucket)) == [f"{bucket}/a.mp4", f"{bucket}/b.mp4"]
