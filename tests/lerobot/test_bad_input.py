"""Every rejected input: a clear message naming what and where, exit 2, nothing written, inputs untouched."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import assert_rejected, run_cli
from tests.lerobot import util


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot-bad")
    return {
        "v21": util.make(root / "v21", version="v2.1", lengths=(8, 9), cameras=0),
        "v30": util.make(root / "v30", version="v3.0", lengths=(8, 9, 6), cameras=0),
        "cam": util.make(root / "cam", version="v3.0", lengths=(6, 5), cameras=1),
    }


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def _merge(out: Path, *inputs: Path | dict) -> dict:
    """The config of a merge of `inputs` (folders, or input sections) into `out`."""
    sections = [i if isinstance(i, dict) else {"path": str(i)} for i in inputs]
    return {"kind": "lerobot", "inputs": sections, "output": {"path": str(out)}}


def _copy(base: Path, tmp_path: Path, name: str = "bad") -> Path:
    return Path(shutil.copytree(base, tmp_path / name))


def test_fps_mismatch(ray_address, bases, tmp_path):
    other = util.make(tmp_path / "fps15", version="v2.1", lengths=(5,), cameras=0, fps=15)
    assert_rejected(
        _merge(tmp_path / "out", bases["v21"], other),
        r"input fps15 .*: fps 15 != 10",
        [bases["v21"], other],
        tmp_path / "out",
    )


def test_robot_type_mismatch(ray_address, bases, tmp_path):
    other = util.make(tmp_path / "koch", version="v3.0", lengths=(5,), cameras=0, robot_type="koch")
    assert_rejected(
        _merge(tmp_path / "out", bases["v21"], other),
        r"robot_type 'koch' != 'so100'",
        [bases["v21"], other],
        tmp_path / "out",
    )


@pytest.mark.parametrize(
    ("attr", "value", "match"),
    [
        ("shape", [7], r"feature 'observation.state' shape \(7,\) != \(6,\)"),
        ("dtype", "float64", r"feature 'observation.state' dtype 'float64' != 'float32'"),
        ("names", ["a", "b", "c", "d", "e", "f"], r"feature 'observation.state' names \['a'"),
    ],
)
def test_feature_mismatch(ray_address, bases, tmp_path, attr, value, match):
    bad = _copy(bases["v30"], tmp_path)
    _edit_json(bad / "meta/info.json", lambda i: i["features"]["observation.state"].__setitem__(attr, value))
    assert_rejected(
        _merge(tmp_path / "out", bases["v21"], bad), r"input bad .*" + match, [bases["v21"], bad], tmp_path / "out"
    )


def test_video_size_mismatch(ray_address, bases, tmp_path):
    other = util.make(tmp_path / "wide", version="v3.0", lengths=(4,), cameras=1, width=64)
    # The declared features agree; only the probed stream tells the truth.
    _edit_json(
        other / "meta/info.json", lambda i: i["features"]["observation.images.cam0"].__setitem__("shape", [32, 48, 3])
    )
    assert_rejected(
        _merge(tmp_path / "out", bases["cam"], other),
        r"input wide: video .*file-000.mp4 .*width 64 != 48",
        [bases["cam"], other],
        tmp_path / "out",
    )


def test_video_codec_mismatch(ray_address, bases, tmp_path):
    other = util.make(tmp_path / "av1", version="v3.0", lengths=(4,), cameras=1, codec="av1")
    assert_rejected(
        _merge(tmp_path / "out", bases["cam"], other),
        r"input av1: video .*codec av1 != h264",
        [bases["cam"], other],
        tmp_path / "out",
    )


def test_missing_parquet(ray_address, bases, tmp_path):
    bad = _copy(bases["v21"], tmp_path)
    (bad / "data/chunk-000/episode_000001.parquet").unlink()
    assert_rejected(
        _merge(tmp_path / "out", bad),
        r"input bad: episode 1 needs data file .*episode_000001.parquet, which is missing",
        [bad],
        tmp_path / "out",
    )


def test_missing_mp4(ray_address, bases, tmp_path):
    bad = _copy(bases["cam"], tmp_path)
    (bad / "videos/observation.images.cam0/chunk-000/file-000.mp4").unlink()
    assert_rejected(
        _merge(tmp_path / "out", bad),
        r"input bad: episode 0 needs video file .*file-000.mp4, which is missing",
        [bad],
        tmp_path / "out",
    )


def test_rows_disagree_with_length(ray_address, bases, tmp_path):
    bad = _copy(bases["v21"], tmp_path)
    path = bad / "meta/episodes.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[1]["length"] = 10
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert_rejected(
        _merge(tmp_path / "out", bad),
        r"input bad: episode 1 has 9 rows in .*episode_000001.parquet but its metadata says length 10",
        [bad],
        tmp_path / "out",
    )


def test_selection_out_of_range(ray_address, bases, tmp_path):
    assert_rejected(
        _merge(tmp_path / "out", {"path": str(bases["v30"]), "episodes": "1:5"}),
        r"input v30: inputs\[0\]: episodes '1:5' is out of range: episode 3 does not exist; the dataset has 3 episodes \(0..2\)",
        [bases["v30"]],
        tmp_path / "out",
    )


def test_corrupt_parquet(ray_address, bases, tmp_path):
    bad = _copy(bases["v30"], tmp_path)
    target = bad / "data/chunk-000/file-001.parquet"
    target.write_bytes(b"PAR1" + b"\x00" * 64)
    assert_rejected(_merge(tmp_path / "out", bad), r"file-001.parquet: corrupt parquet file", [bad], tmp_path / "out")


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ([None, 0], r"file-000.parquet: 1 row\(s\) have no task_index"),
        ([0.5, 0.0], r"file-000.parquet: task_index is not integer"),
    ],
)
def test_bad_indices_in_data(ray_address, bases, tmp_path, values, match):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = _copy(bases["v30"], tmp_path)
    target = bad / "data/chunk-000/file-000.parquet"
    table = pq.read_table(target)
    i = table.schema.get_field_index("task_index")
    column = pa.array(values + [0] * (table.num_rows - len(values)))  # int64 with a null, or double
    table = table.set_column(i, "task_index", column)
    pq.write_table(table, target)
    assert_rejected(_merge(tmp_path / "out", bad), match, [bad], tmp_path / "out")


@pytest.mark.parametrize(
    ("task", "match"),
    [
        (
            1,
            r"episode 0 has task_index 1 \('place the cube'\) in .*file-000.parquet, not one of its tasks \['pick the cube'\]",
        ),
        (7, r"episode 0 has task_index 7 \(not in the tasks file\) in .*file-000.parquet"),
    ],
)
def test_frames_with_a_task_their_episode_does_not_have(ray_address, bases, tmp_path, task, match):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = _copy(bases["v30"], tmp_path)
    target = bad / "data/chunk-000/file-000.parquet"
    table = pq.read_table(target)
    i = table.schema.get_field_index("task_index")
    tasks = table["task_index"].to_pylist()
    assert tasks[0] == 0 and table["episode_index"][0].as_py() == 0
    table = table.set_column(i, table.schema.field(i), pa.array([task, *tasks[1:]], table.schema.field(i).type))
    pq.write_table(table, target)
    assert_rejected(_merge(tmp_path / "out", bad), r"input bad: " + match, [bad], tmp_path / "out")


def test_episodes_metadata_without_a_column(ray_address, bases, tmp_path):
    import pyarrow.parquet as pq

    bad = _copy(bases["v30"], tmp_path)
    target = next((bad / "meta/episodes").rglob("*.parquet"))
    pq.write_table(pq.read_table(target).drop_columns(["length"]), target)
    assert_rejected(
        _merge(tmp_path / "out", bad),
        r"meta/episodes: the episodes metadata has no column 'length'",
        [bad],
        tmp_path / "out",
    )


@pytest.mark.parametrize(
    ("column", "values", "match"),
    [
        ("videos/observation.images.cam0/from_timestamp", [None, 0.5], r"1 row\(s\) have no videos/observation"),
        ("length", ["6", "x"], r"length is not integer"),
    ],
)
def test_episodes_metadata_with_missing_or_non_numeric_values(ray_address, bases, tmp_path, column, values, match):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = _copy(bases["cam"], tmp_path)
    target = next((bad / "meta/episodes").rglob("*.parquet"))
    table = pq.read_table(target)
    i = table.schema.get_field_index(column)
    pq.write_table(table.set_column(i, column, pa.array(values)), target)
    assert_rejected(_merge(tmp_path / "out", bad), r"input bad: .*meta/episodes: " + match, [bad], tmp_path / "out")


def test_unknown_codebase_version(ray_address, bases, tmp_path):
    bad = _copy(bases["v30"], tmp_path)
    _edit_json(bad / "meta/info.json", lambda i: i.__setitem__("codebase_version", "v1.6"))
    assert_rejected(
        _merge(tmp_path / "out", bad),
        r"input bad: .*codebase_version 'v1.6' is not supported; expected one of v2.1, v3.0",
        [bad],
        tmp_path / "out",
    )


def test_cli_exit_code_and_message(ray_address, bases, tmp_path):
    out = tmp_path / "out"
    config = tmp_path / "merge.yaml"
    config.write_text(
        f"kind: lerobot\ninputs:\n  - path: {bases['v30']}\n    episodes: [0, 7]\noutput:\n  path: {out}\n"
    )
    result = run_cli("run", str(config), "--address", ray_address)
    assert result.returncode == 2, result.stderr
    assert "episode 7 does not exist" in result.stderr
    assert not out.exists()
