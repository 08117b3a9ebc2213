"""Reading LeRobot outputs back in tests, straight from the files (pyarrow/json), and shared dataset recipes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raymerge.lerobot import samples


def info(root: Path) -> dict:
    return json.loads((root / "meta/info.json").read_text())


def data(root: Path) -> pa.Table:
    """Every frame of a dataset, in file order."""
    return pa.concat_tables([pq.read_table(p) for p in sorted((root / "data").rglob("*.parquet"))])


def tasks(root: Path) -> list[str]:
    if (root / "meta/tasks.jsonl").exists():
        rows = [json.loads(line) for line in (root / "meta/tasks.jsonl").read_text().splitlines()]
        return [r["task"] for r in sorted(rows, key=lambda r: r["task_index"])]
    t = pq.read_table(root / "meta/tasks.parquet").to_pydict()
    return [task for _, task in sorted(zip(t["task_index"], t["task"], strict=True))]


def episodes(root: Path) -> list[dict]:
    if (root / "meta/episodes.jsonl").exists():
        return [json.loads(line) for line in (root / "meta/episodes.jsonl").read_text().splitlines()]
    files = sorted((root / "meta/episodes").rglob("*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in files]).to_pylist()


def frames_by_episode(root: Path) -> dict[int, dict[str, np.ndarray]]:
    """episode_index -> columns of its frames (state, frame_index, timestamp, task strings)."""
    t = data(root)
    names = tasks(root)
    out = {}
    eps = t["episode_index"].to_numpy()
    for ep in np.unique(eps):
        rows = t.filter(pa.compute.equal(t["episode_index"], ep))
        out[int(ep)] = {
            "state": np.stack(rows["observation.state"].to_numpy(zero_copy_only=False)),
            "frame_index": rows["frame_index"].to_numpy(),
            "timestamp": rows["timestamp"].to_numpy(),
            "index": rows["index"].to_numpy(),
            "task": [names[i] for i in rows["task_index"].to_pylist()],
        }
    return out


def make(root: Path, **kwargs) -> Path:
    samples.make(None, str(root), **kwargs)
    return root


def video_ref(root: Path, episode: int, key: str) -> tuple[Path, float]:
    """(mp4 file, from_timestamp) of an episode's camera, in either version."""
    if info(root)["codebase_version"] == "v2.1":
        return root / f"videos/chunk-{episode // 1000:03d}/{key}/episode_{episode:06d}.mp4", 0.0
    row = next(r for r in episodes(root) if r["episode_index"] == episode)
    rel = f"videos/{key}/chunk-{row[f'videos/{key}/chunk_index']:03d}/file-{row[f'videos/{key}/file_index']:03d}.mp4"
    return root / rel, row[f"videos/{key}/from_timestamp"]


def column(table: pa.Table, key: str) -> np.ndarray:
    values = table[key].to_numpy(zero_copy_only=False)
    return np.stack(values).astype(np.float64) if values.dtype == object else values.astype(np.float64)[:, None]


NUMERIC = ("action", "observation.state", "timestamp", "frame_index", "episode_index", "index", "task_index")
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


def check_stats(root: Path) -> None:
    """stats.json equals numpy's statistics of the dataset's own frames (quantiles within 1e-3 relative)."""
    stats = json.loads((root / "meta/stats.json").read_text())
    table = data(root)
    for key in NUMERIC:
        x = column(table, key)
        s = stats[key]
        assert s["count"] == [len(x)], key
        np.testing.assert_allclose(s["min"], x.min(0), err_msg=key)
        np.testing.assert_allclose(s["max"], x.max(0), err_msg=key)
        np.testing.assert_allclose(s["mean"], x.mean(0), rtol=1e-9, atol=1e-9, err_msg=key)
        np.testing.assert_allclose(s["std"], x.std(0), rtol=1e-7, atol=1e-9, err_msg=key)
        for name, q in QUANTILES.items():
            np.testing.assert_allclose(s[name], np.quantile(x, q, axis=0), rtol=1e-3, atol=1e-9, err_msg=key)


def episode_stats(root: Path) -> dict[int, dict[str, dict]]:
    """Per-episode stats as written: v2.1 `episodes_stats.jsonl`, v3.0 `stats/<feature>/<stat>` columns."""
    if (root / "meta/episodes_stats.jsonl").exists():
        rows = [json.loads(line) for line in (root / "meta/episodes_stats.jsonl").read_text().splitlines()]
        return {r["episode_index"]: r["stats"] for r in rows}
    out: dict[int, dict[str, dict]] = {}
    for row in episodes(root):
        stats: dict[str, dict] = {}
        for col, value in row.items():
            if col.startswith("stats/") and value is not None:
                feature, name = col[len("stats/") :].rsplit("/", 1)
                stats.setdefault(feature, {})[name] = value
        out[row["episode_index"]] = stats
    return out


def check_episode_stats(out: Path, parts: list[tuple[Path, list[int]]], cameras: int = 2) -> None:
    """Each output episode's numeric stats equal numpy's on its own frames (with quantiles where the version
    stores them); its camera stats are its source episode's."""
    table = data(out)
    episode_of = table["episode_index"].to_numpy()
    mine = episode_stats(out)
    v21 = info(out)["codebase_version"] == "v2.1"
    expected = [(root, ep) for root, eps in parts for ep in eps]
    assert sorted(mine) == list(range(len(expected)))
    for new, (root, ep) in enumerate(expected):
        rows = np.flatnonzero(episode_of == new)
        for key in NUMERIC:
            x = column(table, key)[rows]
            ref = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0)}
            if not v21:
                ref |= {name: np.quantile(x, q, axis=0) for name, q in QUANTILES.items()}
            got = mine[new][key]
            assert sorted(got) == sorted([*ref, "count"]), f"episode {new} {key}"
            assert got["count"] == [len(rows)], f"episode {new} {key}"
            for name, value in ref.items():
                np.testing.assert_allclose(got[name], value, rtol=1e-12, atol=1e-12, err_msg=f"{new} {key} {name}")
        source = episode_stats(root)[ep]
        for key in samples.camera_keys(cameras):
            kept = {k: v for k, v in source[key].items() if not v21 or k in ("min", "max", "mean", "std", "count")}
            assert mine[new][key] == kept, f"episode {new} {key}"


def check_merged(out: Path, parts: list[tuple[Path, list[int]]], cameras: int = 2, reencoded: bool = False) -> None:
    """Every output frame carries its source frame's values, new indices and task string; video frames
    decoded at episode start, middle and end equal the source's (with `reencoded`: are closest to the
    source frame at that time, not to its neighbours)."""
    from fsspec.implementations.local import LocalFileSystem

    from raymerge.lerobot.video.decode import decode_at

    got = frames_by_episode(out)
    expected = [(root, ep) for root, eps in parts for ep in eps]
    assert sorted(got) == list(range(len(expected)))
    cache: dict[Path, dict] = {}
    next_index = 0
    fs = LocalFileSystem()
    for new, (root, ep) in enumerate(expected):
        src = cache.setdefault(root, frames_by_episode(root))[ep]
        mine = got[new]
        np.testing.assert_array_equal(mine["state"], src["state"])
        np.testing.assert_array_equal(mine["frame_index"], src["frame_index"])
        np.testing.assert_array_equal(mine["timestamp"], src["timestamp"])
        assert mine["task"] == src["task"]
        assert mine["index"].tolist() == list(range(next_index, next_index + len(src["state"])))
        next_index += len(src["state"])
        stamps = src["timestamp"][[0, len(src["timestamp"]) // 2, -1]].astype(float)
        for key in samples.camera_keys(cameras):
            out_file, out_from = video_ref(out, new, key)
            src_file, src_from = video_ref(root, ep, key)
            a = decode_at(fs, str(out_file), [out_from + t for t in stamps])
            b = decode_at(fs, str(src_file), [src_from + t for t in stamps])
            if not reencoded:
                np.testing.assert_array_equal(a, b, err_msg=f"episode {new} {key}")
                continue
            step = 1 / info(root)["fps"]
            for frame, t in zip(a, stamps, strict=True):
                near = [src_from + t + d for d in (-step, 0.0, step) if 0 <= t + d <= stamps[-1]]
                ref = decode_at(fs, str(src_file), near)
                dist = [np.abs(frame.astype(int) - r.astype(int)).mean() for r in ref]
                assert np.argmin(dist) == near.index(src_from + t), f"episode {new} {key} t={t}: {dist}"
    assert info(out)["total_frames"] == next_index
    assert info(out)["total_episodes"] == len(expected)


def check_video_timing(root: Path) -> int:
    """Every video of a dataset reads at the dataset's frame rate: FFmpeg's avg_frame_rate is the fps, every
    sample lasts one frame in the mp4 `stts` table, decoded frames are one frame apart, and the files hold
    every episode's frames (a v2.1 file: its episode's, from time 0). How many videos were checked."""
    import av

    from raymerge.lerobot.video import mp4

    meta = info(root)
    fps = meta["fps"]
    lengths = {r["episode_index"]: r["length"] for r in episodes(root)}
    cameras = [k for k, f in meta["features"].items() if f["dtype"] == "video"]
    files = sorted((root / "videos").rglob("*.mp4"))
    total = 0
    for path in files:
        data = path.read_bytes()
        found = mp4.locate_moov(lambda a, b, data=data: data[a:b], len(data))
        table = mp4.samples(found[3]) if found else None
        assert table is not None, path
        frame = table.timescale // fps
        assert table.timescale == frame * fps, path
        assert table.stts[:, 1].tolist() == [frame] * len(table.stts), f"{path}: stts {table.stts.tolist()}"
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            assert s.average_rate == fps, f"{path}: avg_frame_rate {s.average_rate}"
            shown = sorted(int(f.pts) for f in c.decode(s))
        assert len(shown) == len(table)
        assert np.diff(shown).tolist() == [frame] * (len(shown) - 1), f"{path}: frames not one frame apart"
        total += len(shown)
        if meta["codebase_version"] == "v2.1":
            assert len(shown) == lengths[int(path.stem.split("_")[1])], path
            assert shown[0] == 0, path
    assert total == sum(lengths.values()) * len(cameras)
    return len(files)
