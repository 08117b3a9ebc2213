"""S3 in and out through the loopback S3 server; inspect and preview of folders and configs."""

from __future__ import annotations

import io
import tarfile

from raymerge import api
from raymerge.webdataset import samples as S
from raymerge.webdataset.describe import inspect, preview


def test_join_from_s3_to_s3(ray_address, s3, wds):
    fs, bucket, opts = s3["fs"], s3["bucket"], s3["storage_options"]
    fs.put(str(wds["root"] / "images"), f"{bucket}/in/images", recursive=True)
    fs.put(str(wds["root"] / "captions"), f"{bucket}/in/captions", recursive=True)
    cfg = {
        "kind": "webdataset",
        "operation": "join",
        "inputs": [
            {"path": f"s3://{bucket}/in/images/shard-{{00000..00002}}.tar", "storage_options": opts},
            {"path": f"s3://{bucket}/in/captions", "nonmatch": "none", "storage_options": opts},
        ],
        "output": {"path": f"s3://{bucket}/out", "storage_options": opts, "maxcount": 25},
    }
    report = api.run(cfg)
    assert report.rows_out == 60
    listed = sorted(p.split("/out/", 1)[1] for p in fs.find(f"{bucket}/out"))
    assert listed == sorted(
        [f"shard-00000{i}.tar{s}" for i in range(3) for s in ("", ".idx")]
        + [f".nv-meta/{n}" for n in (".info.json", "split.yaml", "dataset.yaml", "index.sqlite", "index.uuid")]
        + ["raymerge.json"]
    )
    got = []
    for i in range(3):
        with tarfile.open(fileobj=io.BytesIO(fs.cat_file(f"{bucket}/out/shard-00000{i}.tar"))) as tar:
            got += [(m.name, tar.extractfile(m).read()) for m in tar]
    assert [n for n, _ in got if n.endswith(".jpg")] == [f"{k}.jpg" for k in wds["keys"]]
    want = {
        f"{k}.{e}": d
        for src in (wds["images"], wds["captions"])
        for k, m in src.items()
        if k in wds["images"]
        for e, d in m.items()
    }
    assert dict(got) == want
    info = api.inspect(f"s3://{bucket}/out", opts)
    assert (info["kind"], info["samples"], info["shards"], info["energon_metadata"]) == ("webdataset", 60, 3, True)


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
