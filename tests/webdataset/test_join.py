"""Key joins end to end: order, nonmatch modes, bytes, tar headers, index files; from S3 to S3."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from raymerge import api
from raymerge.errors import InvalidInput
from tests.helpers import tree_digest
from tests.webdataset.util import headers, read_samples


def join_config(wds: dict, out, captions: str = "skip", meta: str = "none", **output) -> dict:
    root = wds["root"]
    return {
        "kind": "webdataset",
        "operation": "join",
        "inputs": [
            {"path": str(root / "images")},
            {"path": str(root / "captions"), "nonmatch": captions},
            {"path": str(root / "meta"), "nonmatch": meta},
        ],
        "output": {"path": str(out), "maxcount": 16, **output},
    }


def test_join_skip_and_none_copies_every_member_byte_for_byte(ray_address, wds, out):
    before = tree_digest(wds["root"])
    report = api.run(join_config(wds, out))
    assert tree_digest(wds["root"]) == before

    expected_keys = [k for k in wds["keys"] if k not in wds["missing_captions"]]
    written = read_samples(out)
    assert [key for _, key, _ in written] == expected_keys  # primary order, skipped keys gone
    for _, key, members in written:
        sources = {**wds["images"][key], **wds["captions"][key], **wds["meta"].get(key, {})}
        assert [name for name, _ in members] == sorted(f"{key}.{ext}" for ext in sources)
        assert {name: data for name, data in members} == {f"{key}.{ext}": d for ext, d in sources.items()}

    assert report.rows_out == len(expected_keys)
    primary, captions, meta = report.inputs
    assert (primary.rows_in, primary.rows_out) == (60, len(expected_keys))
    assert captions.rows_in == len(wds["captions"])
    assert captions.dropped["key not in primary"] == 2
    assert meta.rows_out == len([k for k in expected_keys if k in wds["meta"]])
    assert report.details["samples_without_meta"] == len(expected_keys) - meta.rows_out


def test_output_shards_have_fixed_headers_and_energon_tar_index(ray_address, wds, out):
    api.run(join_config(wds, out, maxcount=10))
    tars = sorted(out.glob("*.tar"))
    assert [t.name for t in tars] == [f"shard-{i:06d}.tar" for i in range(len(tars))]
    total = 0
    for tar_path in tars:
        infos = headers(tar_path)
        assert all(i.mtime == 0 and i.uid == 0 and i.gid == 0 and i.isreg() and not i.pax_headers for i in infos)
        firsts, last_key = [], None
        for i in infos:
            key = i.name.split(".", 1)[0]
            if key != last_key:
                firsts.append(i.offset)
                last_key = key
        end = infos[-1].offset_data + -(-infos[-1].size // 512) * 512
        idx = np.fromfile(f"{tar_path}.idx", dtype="<u8")
        assert idx.tolist() == [*firsts, end]
        assert 0 < len(firsts) <= 10
        total += len(firsts)
    assert total == 60 - len(wds["missing_captions"])


def test_nonmatch_error_names_missing_keys_and_writes_nothing(ray_address, wds, out):
    before = tree_digest(wds["root"])
    with pytest.raises(InvalidInput) as e:
        api.run(join_config(wds, out, captions="error"))
    msg = str(e.value)
    assert f"input captions (nonmatch: error): {len(wds['missing_captions'])} primary key(s) have no match" in msg
    for key in wds["missing_captions"][:10]:
        assert repr(key) in msg
    assert not out.exists()
    assert tree_digest(wds["root"]) == before


def test_member_clash_is_an_error_unless_prefixed(ray_address, wds, out, tmp_path):
    cfg = join_config(wds, out, meta="none")
    cfg["inputs"].append({"path": str(wds["root"] / "meta"), "name": "meta2", "nonmatch": "skip"})
    with pytest.raises(InvalidInput, match=r"member \.json is in both meta and meta2"):
        api.run(cfg)
    assert not out.exists()
    cfg["inputs"][3]["prefix"] = "extra"
    api.run(cfg)
    written = read_samples(out)
    assert all(k in wds["meta"] for _, k, _ in written)  # skip on meta2 keeps only keys with metadata
    key = written[0][1]
    names = dict(written[0][2])
    assert names[f"{key}.extra.json"] == names[f"{key}.json"] == wds["meta"][key]["json"]


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
