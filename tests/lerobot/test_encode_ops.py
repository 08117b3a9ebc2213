"""convert_image_to_video and reencode_videos: images in the data files become mp4s laid out as each version
lays them out, or videos are encoded again with new settings; every frame decoded back and compared with its
source, frame rates constant, indices and stats exact, other cameras copied as they were."""

from __future__ import annotations

import io
import json

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from raymerge import api
from raymerge.errors import InvalidInput
from raymerge.lerobot.config import DepthOptions
from raymerge.lerobot.video.transcode import depth_codes, depth_values
from tests.helpers import assert_rejected, tree_digest
from tests.lerobot import util

IMAGES = ["observation.images.img0", "observation.images.img1"]
DEPTH = "observation.depth"
# h264 at crf 0 in 4:4:4 is lossless in YUV: what is left is the RGB <-> YUV rounding.
LOSSLESS = {"codec": "h264", "crf": 0, "pix_fmt": "yuv444p", "gop": 4}
RGB_TOLERANCE = 3


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot-encode")
    shape = {"lengths": (6, 9, 5), "cameras": 1, "height": 24, "width": 32, "codec": "h264", "gop": 4}
    return {v: util.make(root / v, version=v, seed=7, image_cameras=2, depth=True, **shape) for v in ("v3.0", "v2.1")}


def run(operation: str, src, out, executor: str | None = None, **encode) -> object:
    cfg = {"kind": "lerobot", "operation": operation, "inputs": [{"path": str(src)}], "output": {"path": str(out)}}
    return api.run(cfg | {"encode": encode}, executor=executor)


def source_images(root, key: str) -> dict[int, np.ndarray]:
    """Each episode's images of `key`, decoded from the PNG bytes of the data files."""
    table = util.data(root)
    eps = table["episode_index"].to_numpy()
    out = {}
    for ep in np.unique(eps).tolist():
        blobs = table[key].combine_chunks().field("bytes").to_pylist()
        frames = [av.open(io.BytesIO(blobs[r])).decode(video=0).__next__() for r in np.flatnonzero(eps == ep)]
        out[ep] = np.stack([f.to_ndarray() for f in frames])
    return out


def decoded(root, episode: int, key: str, length: int) -> np.ndarray:
    """An episode's frames of camera `key` as stored (RGB, or 12-bit codes for depth), checked to sit at the
    episode's timestamps."""
    path, start = util.video_ref(root, episode, key)
    fps = util.info(root)["fps"]
    with av.open(str(path)) as c:
        frames = [f for f in c.decode(video=0) if start - 0.5 / fps < f.time < start + (length - 0.5) / fps]
    assert [round((f.time - start) * fps) for f in frames] == list(range(length)), (episode, key)
    grey = frames[0].format.name.startswith("gray")
    return np.stack([f.to_ndarray() if grey else f.to_ndarray(format="rgb24") for f in frames])


@pytest.mark.parametrize("executor", [None, "in-process"])
@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
def test_convert_image_to_video_frame_by_frame(ray_address, sources, tmp_path, version, executor):
    src = sources[version]
    before = tree_digest(src)
    out = tmp_path / "out"
    report = run("convert_image_to_video", src, out, executor, **LOSSLESS)
    info = util.info(out)
    lengths = {r["episode_index"]: r["length"] for r in util.episodes(out)}
    assert report.details["encoded_cameras"] == sorted([*IMAGES, DEPTH])
    files = len(lengths) if version == "v2.1" else 1  # v3.0: the files follow the data file (all episodes)
    assert report.details["videos_encoded"] == 3 * files
    assert report.details["videos_copied"] + report.details["videos_remuxed"] == files  # the video camera
    for key in IMAGES:
        feature = info["features"][key]
        assert feature["dtype"] == "video" and feature["shape"] == [24, 32, 3]
        assert feature["info"]["video.codec"] == "h264" and feature["info"]["video.pix_fmt"] == "yuv444p"
        assert feature["info"]["video.g"] == 4 and feature["info"]["video.crf"] == 0
        for ep, images in source_images(src, key).items():
            got = decoded(out, ep, key, lengths[ep])
            assert np.abs(got.astype(int) - images).max() <= RGB_TOLERANCE, (ep, key)
    depth = info["features"][DEPTH]["info"]
    assert (depth["video.codec"], depth["video.pix_fmt"], depth["video.is_depth_map"]) == ("hevc", "gray12le", True)
    for ep, images in source_images(src, DEPTH).items():
        codes = decoded(out, ep, DEPTH, lengths[ep])
        np.testing.assert_array_equal(codes, depth_codes(images, DepthOptions()))  # lossless
        metres = depth_values(codes, DepthOptions())
        np.testing.assert_allclose(metres, images / 1000.0, rtol=2e-3)
    assert not {*IMAGES, DEPTH} & set(pq.read_schema(next((out / "data").rglob("*.parquet"))).names)
    if version == "v2.1":
        assert info["total_videos"] == len(lengths) * 4
    util.check_merged(out, [(src, list(lengths))], cameras=1)  # data, indices and the copied camera
    util.check_stats(out)
    util.check_episode_stats(out, [(src, list(lengths))], cameras=1)
    carried = util.episode_stats(src)
    for ep, stats in util.episode_stats(out).items():
        for key in IMAGES:
            assert stats[key] == carried[ep][key]
    pooled = json.loads((out / "meta/stats.json").read_text())
    for key in IMAGES:  # the dataset's stats of a converted camera: its episodes' pooled, as for a video
        frames = np.concatenate(list(source_images(src, key).values())).reshape(-1, 3) / 255.0
        np.testing.assert_allclose(np.ravel(pooled[key]["mean"]), frames.mean(0), rtol=1e-9)
        assert pooled[key]["count"] == [sum(lengths.values())]
    assert util.check_video_timing(out) == 4 * files
    assert tree_digest(src) == before


@pytest.mark.parametrize("executor", [None, "in-process"])
@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
def test_reencode_videos_keeps_frames_and_timestamps(ray_address, sources, tmp_path, version, executor):
    src = tmp_path / "videos"
    run("convert_image_to_video", sources[version], src, "in-process", **LOSSLESS, keys=IMAGES[:1])
    out = tmp_path / "out"
    same = LOSSLESS | {"gop": 3, "pix_fmt": "yuv420p"}  # the source's: decoded pixels encoded losslessly
    report = run("reencode_videos", src, out, executor, **same, keys=["observation.images.cam0"])
    info = util.info(out)
    lengths = {r["episode_index"]: r["length"] for r in util.episodes(out)}
    assert report.details["encoded_cameras"] == ["observation.images.cam0"]
    assert info["features"]["observation.images.cam0"]["info"]["video.g"] == 3
    assert info["features"]["observation.images.cam0"]["info"]["video.crf"] == 0
    assert info["features"]["observation.images.cam0"]["info"]["video.height"] == 24  # the stream's facts stay
    assert info["features"][IMAGES[0]] == util.info(src)["features"][IMAGES[0]]
    for ep, n in lengths.items():
        a = decoded(out, ep, "observation.images.cam0", n)
        b = decoded(src, ep, "observation.images.cam0", n)
        np.testing.assert_array_equal(a, b, err_msg=f"episode {ep}")
        copied, _ = util.video_ref(out, ep, IMAGES[0])
        assert copied.read_bytes() == util.video_ref(src, ep, IMAGES[0])[0].read_bytes()
    path, _ = util.video_ref(out, 0, "observation.images.cam0")
    with av.open(str(path)) as c:
        shown = sorted((p.pts, p.is_keyframe) for p in c.demux(video=0) if p.size)  # in display order
    keyframes = [i for i, (_, key) in enumerate(shown) if key]
    assert keyframes[0] == 0 and max(np.diff([*keyframes, len(shown)])) <= 3  # no group of pictures over `gop`
    util.check_merged(out, [(src, list(lengths))], cameras=1, reencoded=True)
    util.check_stats(out)
    util.check_episode_stats(out, [(src, list(lengths))], cameras=1)
    util.check_video_timing(out)


def test_encode_stats_recomputed_from_the_written_videos(ray_address, sources, tmp_path):
    out = tmp_path / "out"
    src = sources["v3.0"]
    cfg = {"kind": "lerobot", "operation": "convert_image_to_video", "inputs": [{"path": str(src)}]}
    api.run(cfg | {"encode": LOSSLESS | {"keys": IMAGES}, "stats": "recompute", "output": {"path": str(out)}})
    lengths = {r["episode_index"]: r["length"] for r in util.episodes(out)}
    for ep, stats in util.episode_stats(out).items():
        frames = decoded(out, ep, IMAGES[1], lengths[ep]).reshape(-1, 3) / 255.0
        np.testing.assert_allclose(np.ravel(stats[IMAGES[1]]["mean"]), frames.mean(0), rtol=1e-9)
        assert stats[IMAGES[1]]["count"] == [lengths[ep]]


def test_encode_refusals_write_nothing(ray_address, sources, tmp_path):
    src = sources["v2.1"]
    out = tmp_path / "out"

    def cfg(operation: str, **encode) -> dict:
        base = {"kind": "lerobot", "operation": operation, "inputs": [{"path": str(src)}]}
        return base | {"encode": encode, "output": {"path": str(out)}}

    convert, reencode = "convert_image_to_video", "reencode_videos"
    assert_rejected(cfg(convert, keys=["observation.images.cam0"]), "is a video feature, not an image one", [src], out)
    assert_rejected(cfg(convert, keys=["nope"]), "has no feature 'nope'", [src], out)
    assert_rejected(cfg(reencode, keys=[IMAGES[0]]), "is a image feature, not an video one", [src], out)
    assert_rejected(cfg(convert, codec="nosuch"), "not one of h264, av1, hevc", [src], out)
    assert_rejected(cfg(convert, codec="h264", pix_fmt="rgb48le"), "encode.pix_fmt 'rgb48le'", [src], out)
    recompute = cfg(convert) | {"stats": "recompute"}
    assert_rejected(recompute, "depth camera 'observation.depth' would get the stats of its decoded", [src], out)
    bare = util.make(tmp_path / "bare", version="v2.1", lengths=(3,), cameras=1, height=24, width=32)
    no_images = cfg(convert) | {"inputs": [{"path": str(bare)}]}
    assert_rejected(no_images, "has no image features to encode", [bare], out)
    with pytest.raises(InvalidInput, match="only applies to operations"):
        api.run({"kind": "lerobot", "inputs": [{"path": str(src)}], "encode": {}, "output": {"path": str(out)}})
    with pytest.raises(InvalidInput, match="depth_max must be above depth_min"):
        api.run(cfg(convert, depth={"depth_min": 2.0, "depth_max": 1.0}))
    assert not out.exists()


def test_convert_v30_video_files_follow_the_data_files(ray_address, sources, tmp_path):
    src = sources["v3.0"]
    out = tmp_path / "out"
    cfg = {"kind": "lerobot", "operation": "convert_image_to_video", "inputs": [{"path": str(src)}]}
    output = {"path": str(out), "data_files_size_in_mb": 0.001}  # a data file per episode
    report = api.run(cfg | {"encode": LOSSLESS | {"keys": IMAGES[1:]}, "output": output})
    assert report.details["videos_encoded"] == report.details["data_files"] == 3
    rows = util.episodes(out)
    assert [r[f"videos/{IMAGES[1]}/file_index"] for r in rows] == [r["data/file_index"] for r in rows] == [0, 1, 2]
    assert [r[f"videos/{IMAGES[1]}/from_timestamp"] for r in rows] == [0.0, 0.0, 0.0]
    for ep, images in source_images(src, IMAGES[1]).items():
        got = decoded(out, ep, IMAGES[1], rows[ep]["length"])
        assert np.abs(got.astype(int) - images).max() <= RGB_TOLERANCE, ep
    assert util.info(out)["features"][IMAGES[0]]["dtype"] == "image"  # not among `keys`: left in the data
    assert IMAGES[0] in pq.read_schema(out / "data/chunk-000/file-000.parquet").names
    util.check_video_timing(out)


def keyframes(path) -> list[int]:
    """The display positions of a video's keyframes."""
    with av.open(str(path)) as c:
        shown = sorted((p.pts, p.is_keyframe) for p in c.demux(video=0) if p.size)
    return [i for i, (_, key) in enumerate(shown) if key]


@pytest.mark.parametrize("executor", [None, "in-process"])
@pytest.mark.parametrize("operation", ["convert_image_to_video", "reencode_videos"])
def test_a_long_v30_file_is_encoded_in_pieces_and_joined(ray_address, sources, tmp_path, operation, executor):
    src = sources["v3.0"]  # episodes of 6, 9 and 5 frames in one data file
    if operation == "reencode_videos":
        src = tmp_path / "videos"
        run("convert_image_to_video", sources["v3.0"], src, "in-process", **LOSSLESS, keys=IMAGES[:1])
    key = IMAGES[0] if operation == "convert_image_to_video" else "observation.images.cam0"
    whole, pieced = tmp_path / "whole", tmp_path / "pieced"
    run(operation, src, whole, executor, **LOSSLESS, keys=[key])
    report = run(operation, src, pieced, executor, **LOSSLESS, keys=[key], frames_per_task=7)
    rows = util.episodes(pieced)
    assert report.details["videos_encoded"] == 1  # three pieces, one file
    assert {r[f"videos/{key}/file_index"] for r in rows} == {0}
    assert [r[f"videos/{key}/from_timestamp"] for r in rows] == [0.0, 0.6, 1.5]
    assert sorted(p.name for p in (pieced / "videos" / key).rglob("*")) == ["chunk-000", "file-000.mp4"]
    path, _ = util.video_ref(pieced, 0, key)
    assert {0, 6, 15} <= set(keyframes(path))  # every piece starts with its own keyframe
    for r in rows:
        np.testing.assert_array_equal(
            decoded(pieced, r["episode_index"], key, r["length"]), decoded(whole, r["episode_index"], key, r["length"])
        )
    util.check_video_timing(pieced)


def test_pieces_cut_between_episodes_across_runs():
    from raymerge.lerobot.encode_plan import pieces
    from raymerge.lerobot.layout import VideoJob, VideoRun

    lengths = np.array([4, 4, 4, 10, 2])
    runs = [
        VideoRun(0, "a.mp4", 1.0, 2.2, 0, np.array([0.0, 0.4, 0.8]), np.array([0.4, 0.4, 0.4])),
        VideoRun(1, "b.mp4", 0.0, 1.2, 3, np.array([0.0, 1.0]), np.array([1.0, 0.2])),
    ]
    got = pieces(VideoJob("cam", "v.mp4", runs), lengths, 8)
    assert [[list(r.episodes) for r in p.runs] for p in got] == [[[0, 1]], [[2]], [[3]], [[4]]]
    assert [(r.path, r.start_s, r.end_s, r.offsets.tolist()) for p in got for r in p.runs] == [
        ("a.mp4", 1.0, 1.8, [0.0, 0.4]),
        ("a.mp4", 1.8, 2.2, [0.0]),
        ("b.mp4", 0.0, 1.0, [0.0]),
        ("b.mp4", 1.0, 1.2, [0.0]),
    ]
    assert pieces(VideoJob("cam", "v.mp4", runs), lengths, 100)[0].runs is runs
