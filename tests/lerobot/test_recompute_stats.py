"""`operation: recompute_stats` on both versions, from a source whose stored stats are all wrong: every stat of
the output against numpy on its own frames (numeric columns, every decoded video frame, every embedded
image), relative-action stats as LeRobot defines them, and the `stats: carry | recompute` policy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from raymerge import api
from raymerge.lerobot import samples
from raymerge.lerobot.video.decode import decode_at
from tests.helpers import assert_rejected, tree_digest
from tests.lerobot import util

LENGTHS = (12, 9, 15, 10)
SEED = 11
IMAGE = "observation.images.top"


def _zeroed(value: object) -> object:
    return np.zeros_like(np.asarray(value, dtype=np.float64)).tolist()


def scramble_stats(root: Path) -> None:
    """Every stored stat but the counts set to zero: what the output has right it recomputed."""
    if (root / "meta/stats.json").exists():
        stats = json.loads((root / "meta/stats.json").read_text())
        wrong = {k: {n: v if n == "count" else _zeroed(v) for n, v in s.items()} for k, s in stats.items()}
        (root / "meta/stats.json").write_text(json.dumps(wrong))
    if (root / "meta/episodes_stats.jsonl").exists():
        rows = [json.loads(line) for line in (root / "meta/episodes_stats.jsonl").read_text().splitlines()]
        for r in rows:
            r["stats"] = {
                k: {n: v if n == "count" else _zeroed(v) for n, v in s.items()} for k, s in r["stats"].items()
            }
        (root / "meta/episodes_stats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return
    for path in sorted((root / "meta/episodes").rglob("*.parquet")):
        table = pq.read_table(path)
        for i, name in enumerate(table.column_names):
            if name.startswith("stats/") and not name.endswith("/count"):
                column = pa.array([_zeroed(v) for v in table[name].to_pylist()], type=table.schema.field(i).type)
                table = table.set_column(i, table.schema.field(i), column)
        pq.write_table(table, path)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Both versions, two cameras (each kept in files the output copies) and an embedded image feature."""
    root = tmp_path_factory.mktemp("lerobot-recompute")
    made = {
        "v30": util.make(
            root / "v30", version="v3.0", lengths=LENGTHS, seed=SEED, episodes_per_file=4, with_image=True
        ),
        "v21": util.make(root / "v21", version="v2.1", lengths=LENGTHS, seed=SEED, with_image=True),
    }
    for path in made.values():
        scramble_stats(path)
    return made


def recompute(src: Path, out: Path, **extra) -> object:
    cfg = {"kind": "lerobot", "operation": "recompute_stats", "inputs": [{"path": str(src)}]}
    return api.run(cfg | extra | {"output": {"path": str(out)}})


def assert_pixel_stats(got: dict, x: np.ndarray, quantiles: bool, what: str) -> None:
    """Per-channel stats of (pixels, 3) values in [0, 1], exact."""
    ref = {"mean": x.mean(0), "std": x.std(0), "min": x.min(0), "max": x.max(0)}
    if quantiles:
        ref |= {name: np.quantile(x, q, axis=0) for name, q in util.QUANTILES.items()}
    for name, value in ref.items():
        np.testing.assert_allclose(np.ravel(got[name]), value, rtol=1e-9, atol=1e-12, err_msg=f"{what} {name}")
        assert np.asarray(got[name]).shape == (3, 1, 1), f"{what} {name}"


def check_camera_stats(out: Path) -> None:
    """Each episode's video and image stats equal numpy's on every frame decoded from the output (images: the
    sample's own pixels, lossless), and stats.json pools them with exact quantiles."""
    v21 = util.info(out)["codebase_version"] == "v2.1"
    stored = util.episode_stats(out)
    fps = util.info(out)["fps"]
    every: dict[str, list[np.ndarray]] = {}
    for ep, length in enumerate(LENGTHS):
        for key in [*samples.camera_keys(2), IMAGE]:
            if key == IMAGE:
                image = samples.frames_of(SEED + 1, ep, 9, 1, 32, 48)[0]
                frames = np.broadcast_to(image, (length, *image.shape))
            else:
                path, start = util.video_ref(out, ep, key)
                frames = decode_at(LocalFileSystem(), str(path), [start + i / fps for i in range(length)])
            x = frames.reshape(-1, 3).astype(np.float64) / 255.0
            every.setdefault(key, []).append(x)
            assert_pixel_stats(stored[ep][key], x, not v21, f"episode {ep} {key}")
            assert np.ravel(stored[ep][key]["count"]).tolist() == [length]
    stats = json.loads((out / "meta/stats.json").read_text())
    for key, parts in every.items():
        assert_pixel_stats(stats[key], np.concatenate(parts), True, f"stats.json {key}")
        assert stats[key]["count"] == [sum(LENGTHS)]


@pytest.mark.parametrize("name", ["v30", "v21"])
def test_every_stat_recomputed_from_the_data_and_decoded_frames(ray_address, sources, tmp_path, name):
    src = sources[name]
    before = tree_digest(src)
    out = tmp_path / "out"
    recompute(src, out)
    assert util.data(out).equals(util.data(src))
    assert tree_digest(out / "videos") == tree_digest(src / "videos")  # copied, not re-encoded
    assert util.tasks(out) == util.tasks(src)
    util.check_stats(out)
    util.check_episode_stats(out, [(src, list(range(len(LENGTHS))))], cameras=0)
    check_camera_stats(out)
    util.check_video_timing(out)
    assert tree_digest(src) == before


def relative_windows(root: Path, chunk: int, keep: np.ndarray) -> np.ndarray:
    """LeRobot's relative actions, from the frames: each window of `chunk` frames within an episode, minus the
    state at its first frame where `keep` is 1."""
    table = util.data(root)
    actions, states = util.column(table, "action"), util.column(table, "observation.state")
    episodes = table["episode_index"].to_numpy()
    out = []
    for ep in np.unique(episodes):
        a, s = actions[episodes == ep], states[episodes == ep]
        out += [a[i : i + chunk] - s[i] * keep for i in range(len(a) - chunk + 1)]
    return np.concatenate(out)


@pytest.mark.parametrize("name", ["v30", "v21"])
def test_relative_action_stats_replace_actions_in_stats_json(ray_address, sources, tmp_path, name):
    src = sources[name]
    out = tmp_path / "out"
    recompute(src, out, relative_action={"chunk_size": 10, "exclude_joints": ["joint5"]}, stats="carry")
    keep = np.array([1.0] * 5 + [0.0])  # joint5 stays absolute
    x = relative_windows(out, 10, keep)
    assert len(x) == 10 * sum(n - 9 for n in LENGTHS if n >= 10)
    got = json.loads((out / "meta/stats.json").read_text())["action"]
    assert got["count"] == [len(x)]
    np.testing.assert_array_equal(got["min"], x.min(0))
    np.testing.assert_array_equal(got["max"], x.max(0))
    np.testing.assert_allclose(got["mean"], x.mean(0), rtol=1e-9)
    np.testing.assert_allclose(got["std"], x.std(0), rtol=1e-7)
    for q_name, q in util.QUANTILES.items():
        np.testing.assert_allclose(got[q_name], np.quantile(x, q, axis=0), rtol=1e-9, err_msg=q_name)
    # the per-episode action stats stay absolute (as LeRobot leaves them); camera stats carried as stored
    util.check_episode_stats(out, [(src, list(range(len(LENGTHS))))], cameras=2)
    assert IMAGE not in util.episode_stats(out)[0]  # carried: the source stores none for its image feature


def test_stats_policy_on_a_merge(ray_address, sources, tmp_path):
    """`stats: recompute` on any operation; `recompute_video_stats: true` still means the same."""
    src = sources["v30"]
    cfg = {"kind": "lerobot", "inputs": [{"path": str(src)}]}
    for extra in ({"stats": "recompute"}, {"recompute_video_stats": True}):
        out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
        api.run(cfg | extra | {"output": {"path": str(out)}})
        check_camera_stats(out)
    out = tmp_path / "carried"
    api.run(cfg | {"output": {"path": str(out)}})
    assert (
        util.episode_stats(out)[1]["observation.images.cam0"] == util.episode_stats(src)[1]["observation.images.cam0"]
    )


def test_refusals_write_nothing(ray_address, sources, tmp_path):
    src = sources["v30"]
    out = tmp_path / "out"
    base = {
        "kind": "lerobot",
        "operation": "recompute_stats",
        "inputs": [{"path": str(src)}],
        "output": {"path": str(out)},
    }
    assert_rejected(
        base | {"relative_action": {"chunk_size": 16}}, "longest episode .* has 15: no window fits", [src], out
    )
    assert_rejected(
        base | {"operation": "merge", "relative_action": {}}, "only applies to operation recompute_stats", [src], out
    )
    assert_rejected(base | {"stats": "carry", "recompute_video_stats": True}, "contradicts stats: carry", [src], out)
    assert_rejected(base | {"stats": "sampled"}, "stats", [src], out)
    assert_rejected(base | {"inputs": [{"path": str(src)}] * 2}, "exactly one input", [src], out)
    no_state = tmp_path / "no-state"
    util.make(no_state, version="v3.0", lengths=(4,), cameras=1)
    info = util.info(no_state)
    del info["features"]["observation.state"]
    (no_state / "meta/info.json").write_text(json.dumps(info))
    cfg = base | {"inputs": [{"path": str(no_state)}], "relative_action": {"chunk_size": 2}}
    assert_rejected(cfg, "needs both `action` and `observation.state`", [no_state], out)
