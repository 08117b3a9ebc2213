"""`--overwrite` (and `--set output.overwrite=true`) covers every target of a run; each refusal gives advice that
works for the target it names."""

from __future__ import annotations

import json
import sqlite3

import pytest
import yaml

from raymerge import api
from raymerge.errors import InvalidInput
from raymerge.text.samples import pairs, write_jsonl
from tests.helpers import run_cli


@pytest.fixture
def config(tmp_path):
    """A run with a JSONL output, a JSON export, a database export and a dataset-folder export, already run once."""
    src = write_jsonl(tmp_path / "in" / "a.jsonl", pairs("a", 3))
    out = tmp_path / "out"
    cfg = {
        "kind": "text",
        "operation": "concat",
        "inputs": [{"path": str(src)}],
        "output": {"path": str(out / "m.jsonl")},
        "exports": [
            {"path": str(out / "m.json")},
            {"path": str(out / "m.db"), "session_name": "merged"},
            {"path": str(out / "saved"), "format": "save_to_disk"},
        ],
    }
    api.run(cfg)
    return cfg, src, out


def test_a_rerun_is_refused_with_advice_that_works(ray_address, config):
    cfg, _, _ = config
    with pytest.raises(InvalidInput, match=r"m.jsonl already exists; set output.overwrite: true or pass --overwrite"):
        api.run(cfg)
    # The output alone allowed: the first export still stops the run, and says how the flag covers it too.
    cfg = {**cfg, "output": {**cfg["output"], "overwrite": True}}
    cfg["exports"] = [{**e, "overwrite": False} if i == 0 else e for i, e in enumerate(cfg["exports"])]
    with pytest.raises(InvalidInput, match=r"export .*m.json already exists; set exports\[0\].overwrite: true"):
        api.run(cfg)


def test_overwrite_flag_and_set_reach_every_export(ray_address, config):
    cfg, src, out = config
    write_jsonl(src, pairs("b", 2))
    api.run(cfg, overwrite=True)
    assert [json.loads(r)["input"] for r in (out / "m.jsonl").read_text().splitlines()] == [
        "b question 0",
        "b question 1",
    ]
    assert [r["input"] for r in json.loads((out / "m.json").read_text())] == ["b question 0", "b question 1"]
    con = sqlite3.connect(out / "m.db")
    assert con.execute("SELECT name, pair_count FROM scrape_sessions").fetchall() == [("merged", 2)]
    con.close()
    assert json.loads((out / "saved" / "state.json").read_text())["_data_files"]

    write_jsonl(src, pairs("c", 1))
    api.run(cfg, overrides=["output.overwrite=true"])
    assert json.loads((out / "m.json").read_text()) == [{"input": "c question 0", "output": "c answer 0"}]


def test_cli_overwrite_reaches_exports(config, tmp_path):
    cfg, src, out = config
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    refused = run_cli("run", str(path))
    assert refused.returncode == 2 and "set output.overwrite: true or pass --overwrite" in refused.stderr
    write_jsonl(src, pairs("d", 2))
    done = run_cli("run", str(path), "--overwrite")
    assert done.returncode == 0, done.stderr
    assert [r["input"] for r in json.loads((out / "m.json").read_text())] == ["d question 0", "d question 1"]
