"""`read_webdataset_join` and `EnergonDatasink`: the join a `raymerge run` writes, read as a Dataset; shards
written by our sink read back by Ray's `read_webdataset`, by our join, and by Energon; the same shards whatever
blocks Ray Data cut."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import ray.data
import yaml

import raymerge.data as rd
from raymerge import api
from raymerge.errors import InvalidInput
from raymerge.webdataset import samples as S
from tests.data.conftest import leftovers
from tests.webdataset.util import read_samples

N = 30


@pytest.fixture(scope="module")
def wds(tmp_path_factory) -> dict:
    """Images for N keys over 3 shards, captions for all but every 5th key (shuffled, 2 shards)."""
    root = tmp_path_factory.mktemp("wds")
    keys = S.keys(N)
    S.write_shards(root / "images", S.image_samples(keys, size=64), 3)
    S.write_shards(root / "captions", S.caption_samples(S.shuffled([k for i, k in enumerate(keys) if i % 5])), 2)
    return {"root": root, "images": str(root / "images"), "captions": str(root / "captions"), "keys": keys}


def as_members(rows: list[dict]) -> list[tuple[str, dict[str, bytes]]]:
    """(key, {member: bytes}) of Dataset rows, without null members or `__...__` columns."""
    return [
        (r["__key__"], {k: bytes(v) for k, v in r.items() if v is not None and not k.startswith("__")}) for r in rows
    ]


def written(folder: Path) -> list[tuple[str, dict[str, bytes]]]:
    return [(key, {name.split(".", 1)[1]: data for name, data in ms}) for _, key, ms in read_samples(folder)]


def test_the_join_holds_what_a_join_run_writes(ordered, wds, tmp_path):
    out = tmp_path / "joined"
    cfg = {
        "kind": "webdataset",
        "operation": "join",
        "inputs": [{"path": wds["images"]}, {"path": wds["captions"], "nonmatch": "skip"}],
        "output": {"path": str(out)},
    }
    api.run(cfg)
    ds = rd.read_webdataset_join(wds["images"], [wds["captions"]], nonmatch="skip", samples_per_task=7)
    assert ds.schema().names == ["__key__", "cls", "jpg", "txt"]
    assert as_members(ds.take_all()) == written(out)
    assert ds.materialize().num_blocks() >= 3


def test_nonmatch_none_and_error(ordered, wds):
    rows = rd.read_webdataset_join(wds["images"], [wds["captions"]], nonmatch="none").take_all()
    assert [r["__key__"] for r in rows] == wds["keys"]
    assert [i for i, r in enumerate(rows) if r["txt"] is None] == list(range(0, N, 5))
    with pytest.raises(InvalidInput, match=r"nonmatch: error\): 6 primary key\(s\) have no match"):
        rd.read_webdataset_join(wds["images"], [wds["captions"]])
    with pytest.raises(InvalidInput, match=r"member \.jpg is in both"):
        rd.read_webdataset_join(wds["images"], [wds["images"]])


def test_energon_sink_round_trips_through_ray_and_our_join(ordered, wds, tmp_path):
    out = tmp_path / "energon"
    source = ray.data.read_webdataset(wds["images"], decoder=None, file_extensions=["tar"])
    expected = as_members(source.take_all())
    source.write_datasink(rd.EnergonDatasink(str(out), maxcount=8))
    assert written(out) == expected
    assert sorted(p.name for p in out.glob("*.tar")) == [f"shard-{i:06d}.tar" for i in range(4)]
    back = ray.data.read_webdataset(str(out), decoder=None, file_extensions=["tar"])
    assert as_members(back.take_all()) == expected
    joined = rd.read_webdataset_join(str(out), [wds["captions"]], nonmatch="none").take_all()
    assert [(k, {e: m[e] for e in ("cls", "jpg")}) for k, m in as_members(joined)] == expected
    info = yaml.safe_load((out / ".nv-meta" / ".info.json").read_text())
    assert info["shard_counts"] == {
        "shard-000000.tar": 8,
        "shard-000001.tar": 8,
        "shard-000002.tar": 8,
        "shard-000003.tar": 6,
    }
    keys = [
        r[0]
        for r in sqlite3.connect(out / ".nv-meta" / "index.sqlite").execute(
            "SELECT sample_key FROM samples ORDER BY tar_file_id, sample_index"
        )
    ]
    assert keys == wds["keys"]
    assert (out / "raymerge.json").exists() and leftovers(out) == []


def test_energon_loads_what_the_sink_wrote(ordered, wds, tmp_path):
    from megatron.energon import WorkerConfig, get_loader, get_val_dataset

    from tests.webdataset.test_energon import RawSamples

    out = tmp_path / "energon"
    rd.read_webdataset_join(wds["images"], [wds["captions"]], nonmatch="skip").write_datasink(
        rd.EnergonDatasink(str(out), maxcount=10, split_ratio={"train": 2, "val": 1})
    )
    expected = dict(written(out))
    loaded = {}
    worker = WorkerConfig(rank=0, world_size=1, num_workers=0)
    for part in ("train", "val"):
        ds = get_val_dataset(out, split_part=part, worker_config=worker, batch_size=None, task_encoder=RawSamples())
        for s in get_loader(ds):
            loaded[s["__key__"]] = {e: s[e] for e in ("jpg", "cls", "txt")}
    assert loaded == expected and len(loaded) == N - 6


def test_shards_do_not_depend_on_blocks(ordered, wds, tmp_path):
    def write(blocks: int, name: str) -> Path:
        out = tmp_path / name
        ds = ray.data.read_webdataset(wds["images"], decoder=None, file_extensions=["tar"]).repartition(blocks)
        ds.write_datasink(rd.EnergonDatasink(str(out), maxsize=64 * 5 + 20))
        return out

    one, many = write(1, "one"), write(7, "many")
    names = sorted(p.name for p in one.iterdir() if p.is_file())
    assert names == sorted(p.name for p in many.iterdir() if p.is_file()) and len(names) > 4
    for name in names:
        if name != "raymerge.json":
            assert (one / name).read_bytes() == (many / name).read_bytes(), name
    rows = [
        sqlite3.connect(d / ".nv-meta" / "index.sqlite")
        .execute("SELECT * FROM sample_parts ORDER BY 1, 2, 3")
        .fetchall()
        for d in (one, many)
    ]
    assert rows[0] == rows[1]


def test_keys_come_from_positions_without_a_key_column(ordered, tmp_path):
    out = tmp_path / "numbered"
    ray.data.from_items([{"txt": f"t{i}", "json": b"{}"} for i in range(12)]).write_datasink(
        rd.EnergonDatasink(str(out), maxcount=5)
    )
    assert [k for k, _ in written(out)] == [f"{i:06d}" for i in range(12)]


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        ([{"__key__": "a", "txt": "x"}, {"__key__": "a", "txt": "y"}], "1 sample key"),
        ([{"__key__": "a.b", "txt": "x"}], "would not read back"),
        ([{"__key__": "a", "cls": 3}], "holds int64"),
        ([{"__key__": "a", "txt": None}], "has no members"),
    ],
)
def test_bad_samples_write_nothing(ordered, tmp_path, rows, problem):
    out = tmp_path / "out"
    with pytest.raises(InvalidInput, match=problem):
        ray.data.from_items(rows).write_datasink(rd.EnergonDatasink(str(out)))
    assert not out.exists() and leftovers(out) == []


def test_an_existing_output_is_kept_unless_overwritten(ordered, tmp_path):
    out = tmp_path / "out"
    rows = ray.data.from_items([{"__key__": "a", "txt": "x"}])
    rows.write_datasink(rd.EnergonDatasink(str(out)))
    with pytest.raises(InvalidInput, match="already exists"):
        rd.EnergonDatasink(str(out))
    ray.data.from_items([{"__key__": "b", "txt": "y"}]).write_datasink(rd.EnergonDatasink(str(out), overwrite=True))
    assert written(out) == [("b", {"txt": b"y"})]
