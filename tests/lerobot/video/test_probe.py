"""Probing streams from headers, and the differences that keep two streams out of one dataset or one file."""

from __future__ import annotations

import pytest

from raymerge.errors import InvalidInput
from raymerge.lerobot.video.probe import StreamInfo, incompatibilities, probe
from tests.lerobot.video.util import LOCAL


def test_incompatibilities_names_each_difference():
    a = StreamInfo("h264", "yuv420p", 32, 24, 10.0, 5, 0.5, "aa")
    b = StreamInfo("av1", "yuv420p", 64, 24, 10.0, 9, 0.9, "bb")
    assert incompatibilities(a, b) == ["codec h264 != av1", "width 32 != 64"]
    assert incompatibilities(a, a) == []
    assert incompatibilities(a, b, remux=True)[-1].startswith("codec parameters (extradata sha256) aa != bb")


def test_probe_bad_files(tmp_path):
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 10)
    with pytest.raises(InvalidInput, match=r"junk\.mp4: not a readable video file"):
        probe(LOCAL, str(tmp_path / "junk.mp4"))
    with pytest.raises(InvalidInput, match=r"gone\.mp4: video file not found"):
        probe(LOCAL, str(tmp_path / "gone.mp4"))
