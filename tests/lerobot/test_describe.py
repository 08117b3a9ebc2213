"""What `inspect` and `preview` say of a LeRobot folder or config, from metadata only (no task runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raymerge import api
from tests.lerobot import util


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lerobot-describe")
    return {
        "v30": util.make(root / "v30", version="v3.0", lengths=(5, 6, 7), cameras=1, with_image=True),
        "v21": util.make(root / "v21", version="v2.1", lengths=(4, 3), cameras=1, with_image=True, tasks=("push",)),
    }


def test_inspect_counts_episodes_frames_files_and_cameras(datasets):
    v30, v21 = (api.inspect(str(datasets[k])) for k in ("v30", "v21"))
    assert (v30["kind"], v30["version"], v30["episodes"], v30["frames"]) == ("lerobot", "v3.0", 3, 18)
    assert v30["cameras"] == ["observation.images.cam0", "observation.images.top"]
    assert v30["files"] == {"data": 2, "videos": 2}  # two episodes per file
    assert v30["features"]["observation.state"] == {"dtype": "float32", "shape": [6]}
    assert (v21["version"], v21["tasks"], v21["files"]) == ("v2.1", ["push"], {"data": 2, "videos": 2})


def test_preview_of_a_folder_shows_where_each_episode_is(datasets):
    first, second = api.preview(str(datasets["v30"]), 2)
    assert (first["episode_index"], first["length"], second["data_file"]) == (0, 5, "data/chunk-000/file-000.parquet")
    cam = second["videos"]["observation.images.cam0"]
    assert cam["file"] == "videos/observation.images.cam0/chunk-000/file-000.mp4"
    assert cam["from_timestamp"] == pytest.approx(0.5) and cam["to_timestamp"] == pytest.approx(1.1)
    # a v2.1 episode owns its video: where it ends is only known by probing it
    [episode] = api.preview(str(datasets["v21"]), 1)
    assert episode["videos"]["observation.images.cam0"]["to_timestamp"] is None


def test_preview_of_a_config_shows_the_new_indices(datasets, tmp_path):
    config = tmp_path / "merge.yaml"
    config.write_text(
        f"kind: lerobot\ninputs:\n  - path: {datasets['v30']}\n    episodes: [2]\n  - path: {datasets['v21']}\n"
        f"output:\n  path: {tmp_path / 'out'}\n"
    )
    got = api.preview(str(config), 2)
    assert [(r["source"], r["source_episode"], r["episode_index"], r["index_from"]) for r in got] == [
        ("v30", 2, 0, 0),
        ("v21", 0, 1, 7),
    ]
    assert not (tmp_path / "out").exists()


def test_preview_of_modify_tasks_shows_the_edited_tasks(datasets, tmp_path):
    config = tmp_path / "tasks.yaml"
    config.write_text(
        f"kind: lerobot\noperation: modify_tasks\ninputs:\n  - path: {datasets['v30']}\n"
        f"tasks:\n  set: stack the cubes\n  episodes: {{1: open the drawer}}\noutput:\n  path: {tmp_path / 'out'}\n"
    )
    got = api.preview(str(config), 3)
    assert [r["tasks"] for r in got] == [["stack the cubes"], ["open the drawer"], ["stack the cubes"]]
    assert not (tmp_path / "out").exists()
