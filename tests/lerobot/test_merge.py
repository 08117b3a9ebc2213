"""End-to-end LeRobot merges on the shared Ray session: real parquet, real mp4, both format versions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from raymerge import api
from tests.helpers import tree_digest
from tests.lerobot import util


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """v3.0 `a` (2 episodes per file: several video files per camera) and v2.1 `b`, sharing a task."""
    root = tmp_path_factory.mktemp("lerobot-sources")
    a = util.make(root / "a", version="v3.0", lengths=(12, 9, 15, 10), seed=1)
    b = util.make(root / "b", version="v2.1", lengths=(8, 11, 7), seed=2, tasks=("place the cube", "push"))
    return a, b


def merge(inputs: list[dict], out: Path, **output) -> object:
    cfg = {"kind": "lerobot", "operation": "merge", "inputs": inputs, "output": {"path": str(out), **output}}
    return api.run(cfg)


def test_merge_mixed_versions_reindexes_frames_tasks_videos_and_stats(ray_address, sources, tmp_path):
    a, b = sources
    before = {p: tree_digest(p) for p in (a, b)}
    report = merge([{"path": str(a)}, {"path": str(b)}], tmp_path / "out")
    out = tmp_path / "out"
    assert util.info(out)["codebase_version"] == "v3.0"
    assert util.tasks(out) == ["pick the cube", "place the cube", "push"]
    util.check_merged(out, [(a, [0, 1, 2, 3]), (b, [0, 1, 2])])
    util.check_stats(out)
    util.check_episode_stats(out, [(a, [0, 1, 2, 3]), (b, [0, 1, 2])])
    rows = util.episodes(out)
    assert [r["dataset_from_index"] for r in rows] == [0, 12, 21, 36, 46, 54, 65]
    assert [r["stats/index/min"] for r in rows] == [[0.0], [12.0], [21.0], [36.0], [46.0], [54.0], [65.0]]
    assert [r["stats/episode_index/max"] for r in rows] == [[float(i)] for i in range(7)]
    assert report.rows_out == 72 and report.details["episodes"] == 7
    assert {p: tree_digest(p) for p in (a, b)} == before
    # image/video stats pooled from the sources' per-episode stats; quantiles only where every episode has
    # them (v2.1 episodes stats have none)
    stats = json.loads((out / "meta/stats.json").read_text())
    assert stats["observation.images.cam0"]["count"] == [72]
    assert np.asarray(stats["observation.images.cam0"]["mean"]).shape == (3, 1, 1)
    assert not set(util.QUANTILES) & set(stats["observation.images.cam0"])


def test_camera_quantiles_pool_as_lerobot_pools_them(ray_address, sources, tmp_path):
    """Without decoding, a camera's quantiles in stats.json are its episodes' stored ones averaged weighted by
    frame count, as LeRobot's aggregate_stats makes them (not exact: quantiles do not pool)."""
    a, _ = sources
    out = tmp_path / "out"
    merge([{"path": str(a)}, {"path": str(a), "episodes": [3, 1]}], out)
    stats = json.loads((out / "meta/stats.json").read_text())
    rows = util.episodes(out)
    for key in ("observation.images.cam0", "observation.images.cam1"):
        counts = np.array([r[f"stats/{key}/count"][0] for r in rows], dtype=np.float64)
        for name in util.QUANTILES:
            per_episode = np.stack([np.ravel(r[f"stats/{key}/{name}"]) for r in rows])
            expected = (per_episode * counts[:, None]).sum(axis=0) / counts.sum()
            np.testing.assert_allclose(np.ravel(stats[key][name]), expected, rtol=1e-12, err_msg=f"{key} {name}")
            assert np.asarray(stats[key][name]).shape == (3, 1, 1)


def test_merge_of_a_merge_with_many_video_files(ray_address, sources, tmp_path):
    a, b = sources
    first = tmp_path / "ab"
    merge([{"path": str(a)}, {"path": str(b), "episodes": [2, 0]}], first, video_files_size_in_mb=0.004)
    assert len(list((first / "videos/observation.images.cam0").rglob("*.mp4"))) > 2
    out = tmp_path / "again"
    merge(
        [{"path": str(first), "episodes": "1:6"}, {"path": str(a), "episodes": "2:"}], out, data_files_size_in_mb=0.004
    )
    assert len(list((out / "data").rglob("*.parquet"))) > 1
    util.check_merged(out, [(first, [1, 2, 3, 4, 5]), (a, [2, 3])])
    util.check_stats(out)


def test_merging_one_dataset_reproduces_it(ray_address, sources, tmp_path):
    a, _ = sources
    out = tmp_path / "same"
    merge([{"path": str(a)}], out)
    assert util.data(out).equals(util.data(a))
    assert util.tasks(out) == util.tasks(a)
    mine, theirs = util.episodes(out), util.episodes(a)
    for key in ("episode_index", "tasks", "length", "dataset_from_index", "dataset_to_index"):
        assert [r[key] for r in mine] == [r[key] for r in theirs]
    # File layout may differ (one output file holds all four episodes); each episode's span does not.
    key = "videos/observation.images.cam1"
    for r, s in zip(mine, theirs, strict=True):
        assert r[f"{key}/to_timestamp"] - r[f"{key}/from_timestamp"] == pytest.approx(
            s[f"{key}/to_timestamp"] - s[f"{key}/from_timestamp"]
        )
    ours, source = (json.loads((p / "meta/stats.json").read_text()) for p in (out, a))
    for key in util.NUMERIC:
        for name in ("min", "max", "mean", "std", "count", *util.QUANTILES):
            np.testing.assert_allclose(ours[key][name], source[key][name], rtol=1e-6, err_msg=f"{key} {name}")
    util.check_merged(out, [(a, [0, 1, 2, 3])])


def test_convert_v30_to_v21_with_selection(ray_address, sources, tmp_path):
    a, b = sources
    out = tmp_path / "v21"
    merge([{"path": str(a), "episodes": "1:3"}, {"path": str(b), "episodes": [2, 0]}], out, format_version="v2.1")
    assert util.info(out)["codebase_version"] == "v2.1"
    assert len(list((out / "videos").rglob("*.mp4"))) == 8
    util.check_merged(out, [(a, [1, 2]), (b, [2, 0])])
    util.check_stats(out)
    util.check_episode_stats(out, [(a, [1, 2]), (b, [2, 0])])
    stats_rows = [json.loads(line) for line in (out / "meta/episodes_stats.jsonl").read_text().splitlines()]
    assert [r["stats"]["episode_index"]["min"] for r in stats_rows] == [[0.0], [1.0], [2.0], [3.0]]


def test_s3_in_and_out(ray_address, sources, s3, tmp_path):
    a, b = sources
    fs, bucket = s3["fs"], s3["bucket"]
    fs.put(str(b), f"{bucket}/in/b", recursive=True)
    opts = s3["storage_options"]
    merge(
        [{"path": str(a)}, {"path": f"s3://{bucket}/in/b", "storage_options": opts}],
        f"s3://{bucket}/out",
        storage_options=opts,
    )
    local = tmp_path / "fetched"
    fs.get(f"{bucket}/out", str(local), recursive=True)
    assert (local / "raymerge.json").exists()
    util.check_merged(local, [(a, [0, 1, 2, 3]), (b, [0, 1, 2])])
    util.check_stats(local)
    shutil.rmtree(local)


def test_recompute_video_stats_decodes_the_written_videos(ray_address, sources, tmp_path):
    """Per-episode camera stats come from the output's own decoded frames (not the sources' metadata), and
    meta/stats.json pools them."""
    from fsspec.implementations.local import LocalFileSystem

    from raymerge.lerobot.video.decode import decode_at

    a, _ = sources
    out = tmp_path / "out"
    cfg = {"kind": "lerobot", "inputs": [{"path": str(a)}], "output": {"path": str(out)}}
    api.run(cfg | {"recompute_video_stats": True})
    fps = util.info(out)["fps"]
    key = "observation.images.cam1"
    rows = util.episodes(out)
    pixels = []
    for row in rows:
        path, start = util.video_ref(out, row["episode_index"], key)
        decoded = decode_at(LocalFileSystem(), str(path), [start + i / fps for i in range(row["length"])])
        x = decoded.reshape(-1, 3).astype(np.float64) / 255.0
        pixels.append(x)
        np.testing.assert_allclose(np.ravel(row[f"stats/{key}/mean"]), x.mean(axis=0), rtol=1e-9)
        np.testing.assert_allclose(np.ravel(row[f"stats/{key}/std"]), x.std(axis=0), rtol=1e-9)
        np.testing.assert_allclose(np.ravel(row[f"stats/{key}/max"]), x.max(axis=0))
        assert np.ravel(row[f"stats/{key}/count"]).tolist() == [row["length"]]
    pooled = json.loads((out / "meta/stats.json").read_text())[key]
    every = np.concatenate(pixels)
    np.testing.assert_allclose(np.ravel(pooled["mean"]), every.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(np.ravel(pooled["std"]), every.std(axis=0), rtol=1e-9)
    for name, q in util.QUANTILES.items():  # exact: every decoded pixel counted
        np.testing.assert_array_equal(np.ravel(pooled[name]), np.quantile(every, q, axis=0), err_msg=name)
    # the sources' stats were computed from the frames before encoding: the recomputed ones differ
    src = {r["episode_index"]: r for r in util.episodes(a)}
    assert any(
        not np.allclose(np.ravel(r[f"stats/{key}/mean"]), np.ravel(src[r["episode_index"]][f"stats/{key}/mean"]))
        for r in rows
    )


def test_whole_source_video_files_are_copied_byte_for_byte(ray_address, sources, tmp_path):
    """A v3.0 file whose episodes all come, in order, and fill an output file alone is copied as it is; the
    episodes keep their places in it. The rest is remuxed; every frame still reads back as the source's."""
    a, b = sources
    sizes = [p.stat().st_size for p in (a / "videos").rglob("*.mp4")]
    cap_mb = max(sizes) * 1.01 / 1024**2
    assert 2 * min(sizes) > max(sizes) * 1.01  # two source files never share an output file
    out = tmp_path / "copied"
    report = merge([{"path": str(a)}, {"path": str(b)}], out, video_files_size_in_mb=cap_mb)
    theirs = set(tree_digest(a / "videos").values())
    ours = tree_digest(out / "videos").values()
    assert theirs <= set(ours)  # every file of `a` is in the output as it is
    assert report.details["videos_copied"] == sum(d in theirs | set(tree_digest(b / "videos").values()) for d in ours)
    util.check_merged(out, [(a, [0, 1, 2, 3]), (b, [0, 1, 2])])
    mine, theirs = util.episodes(out)[:4], util.episodes(a)
    for key in ("videos/observation.images.cam0/from_timestamp", "videos/observation.images.cam1/to_timestamp"):
        assert [r[key] for r in mine] == [r[key] for r in theirs]


@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
def test_episodes_metadata_written_a_chunk_at_a_time_equals_one_chunk(
    ray_address, sources, tmp_path, monkeypatch, version
):
    """The episodes metadata is written a few episodes at a time: per-episode stats read back from the data
    tasks' files, camera stats taken and pooled per chunk, v3.0 episodes files filled up to their cap. However
    it is cut, the rows and the pooled stats are the same."""
    from raymerge.lerobot.stats import per_episode

    a, b = sources
    inputs = [{"path": str(a)}, {"path": str(b), "episodes": [2, 0]}]
    merge(inputs, tmp_path / "whole", format_version=version)
    monkeypatch.setattr(per_episode, "STATS_CHUNK", 2)
    merge(inputs, tmp_path / "chunked", format_version=version, data_files_size_in_mb=0.004)
    whole, chunked = (util.episodes(tmp_path / name) for name in ("whole", "chunked"))
    laid_out = ("data/", "meta/episodes/")  # where files go depends on the size cap, not on the chunks
    assert [{k: v for k, v in r.items() if not k.startswith(laid_out)} for r in chunked] == [
        {k: v for k, v in r.items() if not k.startswith(laid_out)} for r in whole
    ]
    util.check_episode_stats(tmp_path / "chunked", [(a, [0, 1, 2, 3]), (b, [2, 0])])
    pooled = [json.loads((tmp_path / name / "meta/stats.json").read_text()) for name in ("whole", "chunked")]
    assert pooled[0].keys() == pooled[1].keys()
    for key, stats in pooled[0].items():
        for name, value in stats.items():
            np.testing.assert_allclose(pooled[1][key][name], value, rtol=1e-12, err_msg=f"{key} {name}")
    if version == "v3.0":
        files = sorted((tmp_path / "chunked/meta/episodes").rglob("*.parquet"))
        assert len(files) > 1
        for path in files:
            named = pq.read_table(path, columns=["meta/episodes/chunk_index", "meta/episodes/file_index"])
            chunk, file = int(path.parent.name.split("-")[1]), int(path.stem.split("-")[1])
            assert set(named["meta/episodes/chunk_index"].to_pylist()) == {chunk}
            assert set(named["meta/episodes/file_index"].to_pylist()) == {file}


def test_a_later_input_may_have_more_episodes_than_the_first(ray_address, sources, tmp_path):
    _, b = sources
    first = tmp_path / "short"
    merge([{"path": str(b), "episodes": [1]}], first)  # one episode: fewer than b's three
    out = tmp_path / "out"
    merge([{"path": str(first)}, {"path": str(b)}], out)
    assert [r["length"] for r in util.episodes(out)] == [11, 8, 11, 7]
    util.check_merged(out, [(first, [0]), (b, [0, 1, 2])])
