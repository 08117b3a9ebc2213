"""Reading frames at timestamps as LeRobot does: nearest frame within a tolerance, seeks for far-apart ones."""

from __future__ import annotations

import av
import numpy as np
import pytest

from raymerge.errors import InvalidInput
from raymerge.lerobot.video.decode import decode_at
from tests.lerobot.video.util import FPS, LOCAL, STRICT, make


def test_decode_at_picks_nearest_frame_within_tolerance(tmp_path):
    path = make(tmp_path, "a.mp4", 12, 5)
    exact = decode_at(LOCAL, path, [0.3, 0.4], tolerance_s=STRICT)
    # 0.33 is nearest to 0.3, 0.37 to 0.4: picked with the default half-frame tolerance, order kept.
    near = decode_at(LOCAL, path, [0.37, 0.33])
    assert np.array_equal(near, exact[::-1])
    assert not np.array_equal(exact[0], exact[1])
    with pytest.raises(InvalidInput, match=r"a\.mp4: no frame within 0\.000100s of timestamp 0\.330000"):
        decode_at(LOCAL, path, [0.33], tolerance_s=STRICT)
    with pytest.raises(InvalidInput, match=r"of timestamp 5\.000000"):
        decode_at(LOCAL, path, [0.0, 5.0])


def test_decode_at_far_apart_timestamps(tmp_path):
    """Timestamps seconds apart are served by seeking (B-frame stream, keyframes every 7 frames)."""
    path = make(tmp_path, "long.mp4", 80, 6, gop=7)
    ts = [7.9, 0.0, 3.5, 3.6, 6.1]
    got = decode_at(LOCAL, path, ts, tolerance_s=STRICT)
    with av.open(path) as c:
        everything = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert np.array_equal(got, np.stack([everything[round(t * FPS)] for t in ts]))
