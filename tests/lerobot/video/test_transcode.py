"""Encoder settings as LeRobot's options map to them, and depth quantization as LeRobot's depth encoder does
it: 12-bit codes over [depth_min, depth_max], log or linear, and back to metres within one step."""

from __future__ import annotations

import numpy as np
import pytest

from raymerge.errors import InvalidInput
from raymerge.lerobot.config import DepthOptions
from raymerge.lerobot.video.encode import EncoderSettings
from raymerge.lerobot.video.transcode import DEPTH_LEVELS, depth_codes, depth_values


def test_depth_codes_round_trip_within_a_step_and_clip():
    mm = np.array([0, 5, 10, 400, 1000, 5000, 10000, 12000], dtype=np.uint16)
    for opts in (DepthOptions(), DepthOptions(use_log=False), DepthOptions(depth_min=0.2, depth_max=2.0, shift=1)):
        codes = depth_codes(mm, opts)
        assert codes.dtype == np.uint16 and codes.min() == 0 and codes.max() == DEPTH_LEVELS
        assert (np.diff(codes.astype(int)) >= 0).all()
        inside = np.clip(mm / 1000.0, opts.depth_min, opts.depth_max)
        back = depth_values(codes, opts)
        step = depth_values(codes.clip(max=DEPTH_LEVELS - 1) + 1, opts) - depth_values(
            codes.clip(max=DEPTH_LEVELS - 1), opts
        )
        assert (np.abs(back - inside) <= step / 2 + 1e-12).all()
        np.testing.assert_array_equal(depth_codes(inside.astype(np.float64), opts), codes)  # metres as floats


def test_log_quantization_is_finer_near_the_camera():
    opts = DepthOptions()
    near = depth_values(np.array([100, 101]), opts)
    far = depth_values(np.array([4000, 4001]), opts)
    assert np.diff(near)[0] < np.diff(far)[0]
    linear = DepthOptions(use_log=False)
    steps = np.diff(depth_values(np.array([100, 101, 4000, 4001]), linear))
    np.testing.assert_allclose(steps[0], steps[2])


def test_encoder_settings_as_lerobot_passes_them():
    av1 = EncoderSettings.of("av1", "yuv420p", crf=30, gop=2, fast_decode=5)
    assert (av1.encoder, av1.codec, av1.gop) == ("libsvtav1", "av1", 2)
    assert dict(av1.options) == {"crf": "30", "preset": "12", "svtav1-params": "fast-decode=2"}
    x264 = EncoderSettings.of("libx264", "yuv444p", crf=0, preset="veryfast", fast_decode=1)
    assert x264.codec == "h264" and dict(x264.options) == {"crf": "0", "preset": "veryfast", "tune": "fastdecode"}
    with pytest.raises(InvalidInput, match=r"encode\.codec 'vp9': not one of h264, av1, hevc"):
        EncoderSettings.of("vp9", "yuv420p")
    with pytest.raises(InvalidInput, match=r"encode\.codec 'libaom-av1': this PyAV build has no encoder"):
        EncoderSettings.of("libaom-av1", "yuv420p")
    with pytest.raises(InvalidInput, match=r"encode\.pix_fmt 'gray12le': libsvtav1 takes yuv420p"):
        EncoderSettings.of("av1", "gray12le")
