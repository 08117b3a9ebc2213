"""Output parquet schemas equal what LeRobot's own writers produce (fixtures/lerobot_schemas.json, captured by
fixtures/capture_schemas.py with the library versions LeRobot ran on), whatever the inputs carried."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raymerge import api
from tests.lerobot import util

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "lerobot_schemas.json").read_text())


def as_recorded(root: Path) -> Path:
    """The dataset's data files rewritten as LeRobot >= 0.4 records them with `datasets` >= 4: vectors as
    fixed-size lists, `huggingface` metadata whose vector type is `List` (which `datasets` 3.x cannot read)."""
    import datasets

    hf = {}
    for key, ft in util.info(root)["features"].items():
        if ft["dtype"] in ("video", "image"):
            continue
        value = datasets.Value(ft["dtype"])
        hf[key] = value if ft["shape"] == [1] else datasets.List(value, length=ft["shape"][0])
    for path in sorted((root / "data").rglob("*.parquet")):
        table = pq.read_table(path)
        recorded = datasets.Dataset.from_dict(table.to_pydict(), features=datasets.Features(hf)).with_format("arrow")
        pq.write_table(recorded[:], path)
    assert b'"List"' in pq.read_schema(path).metadata[b"huggingface"]
    return root


def described(path: Path) -> dict:
    schema = pq.read_schema(path)
    meta = {k.decode(): json.loads(v) for k, v in (schema.metadata or {}).items() if k != b"ARROW:schema"}
    return {"fields": [[f.name, str(f.type)] for f in schema], "metadata": meta}


def expected(kind: str, columns: list[str]) -> dict:
    """A fixture narrowed to the given columns (the fixture's dataset has an image feature)."""
    fixture = FIXTURES[kind]
    fields = [f for f in fixture["fields"] if f[0] in columns]
    meta = dict(fixture["metadata"])
    if "huggingface" in meta:
        features = meta["huggingface"]["info"]["features"]
        meta["huggingface"] = {"info": {"features": {k: v for k, v in features.items() if k in columns}}}
    return {"fields": fields, "metadata": meta}


@pytest.mark.parametrize("with_image", [False, True])
def test_v21_output_of_v30_inputs_is_typed_as_lerobot_v21_writes_it(ray_address, tmp_path, with_image):
    src = util.make(tmp_path / "src", version="v3.0", cameras=1, with_image=with_image)
    if not with_image:  # image columns cannot go through `datasets` here (no imaging library)
        as_recorded(src)
    out = tmp_path / "v21"
    cfg = {"kind": "lerobot", "inputs": [{"path": str(src)}, {"path": str(src)}]}
    api.run(cfg | {"output": {"path": str(out), "format_version": "v2.1"}})
    for path in sorted((out / "data").rglob("*.parquet")):
        got = described(path)
        assert got == expected("v2.1 data", [name for name, _ in got["fields"]]), path
    util.check_merged(out, [(src, [0, 1, 2, 3]), (src, [0, 1, 2, 3])], cameras=1)


def test_v30_output_is_typed_as_lerobot_merge_writes_it(ray_address, tmp_path):
    v21 = util.make(tmp_path / "v21", version="v2.1", cameras=1)
    recorded = as_recorded(util.make(tmp_path / "v30", version="v3.0", cameras=1, seed=3))
    assert "huggingface" in described(next((v21 / "data").rglob("*.parquet")))["metadata"]
    out = tmp_path / "out"
    api.run({"kind": "lerobot", "inputs": [{"path": str(v21)}, {"path": str(recorded)}], "output": {"path": str(out)}})
    merged = FIXTURES["v3.0 merged data"]
    for path in sorted((out / "data").rglob("*.parquet")):
        got = described(path)
        assert got["fields"] == merged["fields"], path
        assert "huggingface" not in got["metadata"]
    tasks = described(out / "meta/tasks.parquet")
    fixture = FIXTURES["v3.0 tasks"]
    assert tasks["fields"] == fixture["fields"]
    assert {k: v for k, v in tasks["metadata"]["pandas"].items() if k != "creator"} == {
        k: v for k, v in fixture["metadata"]["pandas"].items() if k != "creator"
    }
    util.check_merged(out, [(v21, [0, 1, 2, 3]), (recorded, [0, 1, 2, 3])], cameras=1)
