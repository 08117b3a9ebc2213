"""inspect and preview of folders and tars (headers only), and preview of what a config would write."""

from __future__ import annotations

from raymerge import api
from raymerge.webdataset import samples as S
from raymerge.webdataset.describe import inspect, preview


def test_inspect_reports_extensions_duplicates_and_problems(tmp_path):
    S.write_tar(tmp_path / "d" / "a.tar", S.image_samples(["k1", "k2", "x/k3"]))
    S.write_tar(tmp_path / "d" / "b.tar", S.caption_samples(["k2", "k4"]))
    (tmp_path / "d" / "broken.tar").write_text("not a tar")
    info = api.inspect(str(tmp_path / "d"))
    assert info["kind"] == "webdataset"
    assert (info["shards"], info["samples"]) == (3, 5)
    assert info["extensions"] == {"cls": 3, "jpg": 3, "txt": 2}
    assert info["key_examples"] == ["k1", "k2", "x/k3", "k2", "k4"]
    assert (info["duplicate_keys"], info["duplicate_key_examples"]) == (1, ["k2 (a.tar, b.tar)"])
    assert len(info["problems"]) == 1 and info["problems"][0].startswith("broken.tar: not a readable tar file")


def test_preview_of_folder_and_config(ray_address, wds):
    import fsspec

    fs = fsspec.filesystem("file")
    first = preview(fs, str(wds["root"] / "meta"), 2)
    assert [r["shard"] for r in first] == ["sub/meta-0.tar"] * 2
    key = first[0]["key"]
    assert first[0]["members"] == {f"{key}.json": len(wds["meta"][key]["json"])}
    assert inspect(fs, str(wds["root"] / "images"))["samples"] == 60
    cfg = {
        "kind": "webdataset",
        "operation": "join",
        "inputs": [{"path": str(wds["root"] / "images")}, {"path": str(wds["root"] / "captions"), "nonmatch": "skip"}],
        "output": {"path": str(wds["root"] / "never-written")},
    }
    records = api.preview(api.load_config(cfg), 4)
    assert [r["key"] for r in records] == [k for k in wds["keys"] if k not in wds["missing_captions"]][:4]
    assert set(records[0]["members"]) == {f"{records[0]['key']}.{e}" for e in ("cls", "jpg", "seg.png", "txt")}
    assert not (wds["root"] / "never-written").exists()
