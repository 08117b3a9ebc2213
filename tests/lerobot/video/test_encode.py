"""Encoding frames to mp4: the default encoder, keyframe intervals, bad frames refused."""

from __future__ import annotations

import numpy as np
import pytest

from raymerge.lerobot.video.encode import default_encoder, encode
from raymerge.lerobot.video.probe import probe
from tests.lerobot.video.util import ENCODERS, FPS, LOCAL, keyframe_times, make


def test_default_encoder_and_encode_probe(tmp_path):
    assert default_encoder() in ("libx264", "libopenh264", "libsvtav1", "libaom-av1")
    path = make(tmp_path, "a.mp4", 23, 0, gop=4)
    info = probe(LOCAL, path)
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
    assert probe(LOCAL, path).codec == {"libx264": "h264", "libsvtav1": "av1"}[encoder]


def test_encode_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        encode(np.zeros((2, 24, 32, 3), np.float32), FPS, LOCAL, str(tmp_path / "x.mp4"))
    assert not (tmp_path / "x.mp4").exists()
