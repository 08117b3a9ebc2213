"""Videos with copied and re-encoded groups of pictures read at the dataset's frame rate, for every codec this
PyAV build encodes: a v3.0 -> v2.1 conversion and a v3.0 merge, both cutting between keyframes of sources
with B-frames (where copied groups meet re-encoded ones, decode times used to jump by several frames)."""

from __future__ import annotations

import pytest

from raymerge import api
from raymerge.lerobot import samples
from raymerge.lerobot.video.encode import available_encoder
from tests.lerobot import util

# x265 needs frames of at least 64 pixels each way (smaller ones corrupt its heap).
CODECS = [c for c in ("libx264", "libsvtav1", "libx265") if available_encoder(c)]


@pytest.fixture(scope="module", params=CODECS)
def source(request, tmp_path_factory):
    """v3.0, whole files encoded at once (episodes start between keyframes), groups of 4 with B-frames."""
    root = tmp_path_factory.mktemp(f"timing-{request.param}") / "src"
    return util.make(
        root,
        version="v3.0",
        lengths=(13, 10, 15, 9),
        codec=request.param,
        keyframe_aligned=False,
        gop=4,
        cameras=1,
        height=64,
        width=96,
    )


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_reencoded_cuts_keep_the_frame_rate(ray_address, source, tmp_path, version):
    out = tmp_path / "out"
    cfg = {
        "kind": "lerobot",
        "inputs": [{"path": str(source), "episodes": [1, 3, 0]}],
        "output": {"path": str(out), "format_version": version},
    }
    report = api.run(cfg)
    assert report.details["episodes_reencoded"] > 0
    assert util.check_video_timing(out) == (3 if version == "v2.1" else 1)
    util.check_merged(out, [(source, [1, 3, 0])], cameras=1, reencoded=True)
    assert samples.camera_keys(1) == ["observation.images.cam0"]
