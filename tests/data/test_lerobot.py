"""`LeRobotDatasink`: frames written as a LeRobot v3.0 dataset that passes the checks a merge output passes
(indices, timestamps, decoded frames, stats against numpy), whatever blocks Ray Data cut, that merges with
other datasets, and that `ray.data.read_lerobot` reads where its dependencies are installed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import ray.data
from fsspec.implementations.local import LocalFileSystem

import raymerge.data as rd
from raymerge import api
from raymerge.errors import InvalidInput
from raymerge.lerobot import samples
from raymerge.lerobot.stats.per_episode import frame_stats
from raymerge.lerobot.video.decode import decode_at
from tests.data.conftest import leftovers
from tests.lerobot import util

LENGTHS = (12, 9, 15, 10)
SEED = 3
FPS = 10


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A v3.0 dataset whose raw camera frames are known (`samples.frames_of`)."""
    return util.make(tmp_path_factory.mktemp("lerobot") / "source", lengths=LENGTHS, seed=SEED)


def raw_frames(episode: int, camera: int) -> np.ndarray:
    return samples.frames_of(SEED, episode, camera, LENGTHS[episode], 32, 48)


def frame_rows(root: Path) -> list[dict]:
    """The dataset's frames as `ray.data.read_lerobot` gives them: columns, decoded cameras, task strings and
    the per-source extras (index, task_index, dataset_index, stats)."""
    names = util.tasks(root)
    rows = []
    for r in util.data(root).to_pylist():
        ep, i = r["episode_index"], r["frame_index"]
        rows.append(
            r
            | {
                "action": np.array(r["action"], np.float32),
                "observation.state": np.array(r["observation.state"], np.float32),
                "task": names[r["task_index"]],
                "dataset_index": 0,
                "stats": "{}",
            }
            | {key: raw_frames(ep, c)[i] for c, key in enumerate(samples.camera_keys(2))}
        )
    return rows


def write(rows: list[dict], out: Path, source: Path, blocks: int = 3, **options) -> Path:
    ds = ray.data.from_items(rows).repartition(blocks)
    features = util.info(source)["features"]
    ds.write_datasink(rd.LeRobotDatasink(str(out), fps=FPS, robot_type="so100", features=features, **options))
    return out


def check_written(out: Path, episodes: list[int]) -> None:
    """The output holds `episodes` of the source, renumbered: indices, tasks, values, frames and stats."""
    got = util.frames_by_episode(out)
    assert sorted(got) == list(range(len(episodes)))
    next_index = 0
    for new, ep in enumerate(episodes):
        n = LENGTHS[ep]
        assert got[new]["frame_index"].tolist() == list(range(n))
        assert got[new]["index"].tolist() == list(range(next_index, next_index + n))
        np.testing.assert_array_equal(got[new]["timestamp"], np.arange(n, dtype=np.float32) / FPS)
        next_index += n
    util.check_video_timing(out)
    util.check_stats(out)
    stats = util.episode_stats(out)
    table = util.data(out)
    fs = LocalFileSystem()
    for new, ep in enumerate(episodes):
        rows = np.flatnonzero(table["episode_index"].to_numpy() == new)
        for key in util.NUMERIC:
            x = util.column(table, key)[rows]
            np.testing.assert_allclose(stats[new][key]["mean"], x.mean(0), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(stats[new][key]["q50"], np.quantile(x, 0.5, axis=0), rtol=1e-12, atol=1e-12)
        for c, key in enumerate(samples.camera_keys(2)):
            frames = raw_frames(ep, c)
            exact = frame_stats(frames)
            for name, value in exact.items():
                np.testing.assert_allclose(
                    stats[new][key][name], value, rtol=1e-12, atol=1e-12, err_msg=f"{key} {name}"
                )
            path, start = util.video_ref(out, new, key)
            decoded = decode_at(fs, str(path), [start + i / FPS for i in range(len(frames))])
            err = np.abs(decoded.astype(int) - frames.astype(int)).mean(axis=(1, 2, 3))
            neighbours = np.abs(decoded[1:].astype(int) - frames[:-1].astype(int)).mean(axis=(1, 2, 3))
            assert (err < 6).all() and (err[1:] < neighbours).all(), (key, err, neighbours)
    pooled = json.loads((out / "meta/stats.json").read_text())
    every = np.concatenate([raw_frames(ep, 0) for ep in episodes])
    np.testing.assert_allclose(pooled[samples.camera_keys(2)[0]]["mean"], frame_stats(every)["mean"], rtol=1e-9)


def test_frames_become_a_dataset_that_passes_a_merge_outputs_checks(ordered, source, tmp_path):
    out = write(frame_rows(source), tmp_path / "out", source)
    check_written(out, [0, 1, 2, 3])
    info = util.info(out)
    assert info["codebase_version"] == "v3.0" and info["robot_type"] == "so100"
    assert info["features"] == util.info(source)["features"]
    assert util.tasks(out) == util.tasks(source)
    assert (out / "raymerge.json").exists() and leftovers(out) == []


def test_a_curated_pipeline_renumbers_episodes_and_tasks(ordered, source, tmp_path):
    rows = ray.data.from_items(frame_rows(source)).filter(lambda r: r["episode_index"] in (1, 2))
    rows.write_datasink(rd.LeRobotDatasink(str(tmp_path / "out"), fps=FPS))
    check_written(tmp_path / "out", [1, 2])
    assert util.tasks(tmp_path / "out") == ["place the cube", "pick the cube"]


def test_blocks_cut_anywhere_give_the_same_dataset(ordered, source, tmp_path):
    rows = frame_rows(source)
    a = write(rows, tmp_path / "a", source, blocks=1)
    shuffled = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    b = write(shuffled, tmp_path / "b", source, blocks=9)
    assert util.data(a).equals(util.data(b))
    for name in ("meta/info.json", "meta/stats.json", "meta/tasks.parquet"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert util.episodes(a) == util.episodes(b)
    check_written(b, [0, 1, 2, 3])


def test_the_output_merges_with_other_datasets(ordered, source, tmp_path):
    out = write(frame_rows(source), tmp_path / "written", source, data_files_size_in_mb=0.001)
    assert len(list((out / "data").rglob("*.parquet"))) == 4
    other = util.make(tmp_path / "other", lengths=(7, 8), seed=5, tasks=("push",))
    merged = tmp_path / "merged"
    api.run(
        {
            "kind": "lerobot",
            "operation": "merge",
            "inputs": [{"path": str(out)}, {"path": str(other)}],
            "output": {"path": str(merged)},
        }
    )
    util.check_merged(merged, [(out, [0, 1, 2, 3]), (other, [0, 1])])
    util.check_stats(merged)
    util.check_video_timing(merged)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            lambda rows: [r for r in rows if not (r["episode_index"] == 2 and r["frame_index"] == 4)],
            "frame 4 is missing",
        ),
        (lambda rows: [r | {"timestamp": r["timestamp"] * 2} for r in rows], "frames must be evenly spaced"),
        (lambda rows: [{k: v for k, v in r.items() if k != "task"} for r in rows], "no 'task' column"),
    ],
)
def test_bad_frames_write_nothing(ordered, source, tmp_path, change, problem):
    out = tmp_path / "out"
    with pytest.raises(InvalidInput, match=problem):
        write(change(frame_rows(source)), out, source)
    assert not out.exists() and leftovers(out) == []


def test_an_existing_output_is_refused_before_the_pipeline(ordered, source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InvalidInput, match="already exists"):
        rd.LeRobotDatasink(str(out), fps=FPS)
