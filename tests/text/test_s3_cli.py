"""Object storage through the loopback S3 server, and the `raymerge` command as a user runs it."""

from __future__ import annotations

import json
import sqlite3

import yaml

from raymerge import api
from tests.helpers import run_cli, tree_digest


def test_inputs_from_s3_and_outputs_to_s3(ray_address, samples, s3):
    fs, bucket, options = s3["fs"], s3["bucket"], s3["storage_options"]
    for key in ("jsonl", "parquet", "sqlite"):
        fs.put(str(samples[key]), f"{bucket}/in/{samples[key].name}")
    fs.put(str(samples["hub"]), f"{bucket}/in/hub", recursive=True)
    inputs = [
        {"path": f"s3://{bucket}/in/pairs.jsonl", "storage_options": options},
        {"path": f"s3://{bucket}/in/prompts.parquet", "storage_options": options},
        {"path": f"s3://{bucket}/in/hub", "storage_options": options},
        {"path": f"s3://{bucket}/in/finefoundry.db", "storage_options": options, "session": "stack-sql"},
    ]
    cfg = {
        "kind": "text",
        "operation": "interleave",
        "interleave": {"stopping_strategy": "all_exhausted_without_replacement"},
        "inputs": inputs,
        "output": {"path": f"s3://{bucket}/out/merged.jsonl", "storage_options": options},
        "exports": [{"path": f"s3://{bucket}/out/merged.db", "storage_options": options, "session_name": "s3 merge"}],
    }
    report = api.run(cfg)
    rows = [json.loads(line) for line in fs.cat_file(f"{bucket}/out/merged.jsonl").decode().splitlines()]
    assert [r["input"] for r in rows[:4]] == [
        "jsonl question 0",
        "parquet question 0",
        "hub question 0",
        "stack question 0",
    ]
    assert len(rows) == report.rows_out == 8 + 6 + 9 + 3
    written = [k for k in fs.ls(f"{bucket}/out", detail=False) if not k.endswith(".raymerge.json")]  # the report
    assert sorted(written) == [f"{bucket}/out/merged.db", f"{bucket}/out/merged.jsonl"]
    db = samples["sqlite"].parent.parent / "from-s3.db"
    fs.get(f"{bucket}/out/merged.db", str(db))
    got = sqlite3.connect(db).execute("SELECT input_text FROM scraped_pairs ORDER BY id").fetchall()
    assert [g[0] for g in got] == [r["input"] for r in rows]


def test_cli_plan_run_inspect_preview(ray_address, samples, tmp_path):
    before = tree_digest(samples["jsonl"].parent)
    out = tmp_path / "merged.db"
    config = tmp_path / "merge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kind": "text",
                "operation": "interleave",
                "inputs": [{"path": str(samples["sqlite"]), "session": 1}, {"path": str(samples["parquet"])}],
                "output": {"path": str(out), "session_name": "cli merge"},
            }
        )
    )
    planned = run_cli("plan", str(config), "--address", ray_address)
    assert planned.returncode == 0, planned.stderr
    assert "12 rows out" in planned.stdout and not out.exists()

    preview = run_cli("preview", str(config), "-n", "3")
    assert preview.returncode == 0, preview.stderr
    lines = preview.stdout.splitlines()
    assert lines[0].split() == ["#", "input", "output"]
    assert "reddit question 0" in lines[2] and "reddit answer 0" in lines[2] and "parquet question 0" in lines[3]

    ran = run_cli("run", str(config), "--address", ray_address)
    assert ran.returncode == 0, ran.stderr
    assert "12 rows out" in ran.stdout

    inspected = run_cli("inspect", str(out), "--json")
    assert inspected.returncode == 0, inspected.stderr
    sessions = json.loads(inspected.stdout)["sessions"]
    assert [(s["name"], s["pairs"]) for s in sessions] == [("cli merge", 12)]

    again = run_cli("run", str(config), "--address", ray_address)
    assert again.returncode == 2
    assert "already has a session named 'cli merge'" in again.stderr and "Traceback" not in again.stderr
    assert tree_digest(samples["jsonl"].parent) == before
