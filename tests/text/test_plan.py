"""check and plan: what needs no payload is refused before any executor starts; a plan writes nothing."""

from __future__ import annotations

import shutil

import pytest

from raymerge.errors import InvalidInput
from raymerge.executor import Executor
from raymerge.families import load_config
from raymerge.text import FAMILY


def _config(inputs, output_path, **extra):
    """A validated config; `extra` may replace the output."""
    return load_config(
        {"kind": "text", "operation": "concat", "inputs": inputs, "output": {"path": str(output_path)}, **extra}
    )


def test_check_counts_the_input_bytes_from_listings(samples, tmp_path):
    cfg = _config(
        [
            {"path": str(samples["jsonl"])},
            {"path": str(samples["hub"])},
            {"path": str(samples["sqlite"]), "session": 1},
        ],
        tmp_path / "o.jsonl",
    )
    hub = sum(f.stat().st_size for f in samples["hub"].rglob("*") if f.is_file())
    assert FAMILY.check(cfg) == samples["jsonl"].stat().st_size + hub + samples["sqlite"].stat().st_size


def _broken_parquet(samples, tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 not parquet")
    return [{"path": str(path)}], {}


def _existing_export(samples, tmp_path):
    (tmp_path / "x.json").write_text("[]")
    return [{"path": str(samples["csv"])}], {"exports": [{"path": str(tmp_path / "x.json")}]}


def _database_with_the_session(samples, tmp_path):
    shutil.copy(samples["sqlite"], tmp_path / "ff.db")
    return [{"path": str(samples["csv"])}], {"output": {"path": str(tmp_path / "ff.db"), "session_name": "stack-sql"}}


REFUSED = {
    "missing input": (
        lambda samples, tmp_path: ([{"path": str(tmp_path / "absent.jsonl")}], {}),
        r"absent.jsonl: no such file or folder",
    ),
    "missing split": (
        lambda samples, tmp_path: ([{"path": str(samples["hub"]), "split": "dev"}], {}),
        r"no split 'dev'; splits found: train, test",
    ),
    "missing session": (
        lambda samples, tmp_path: ([{"path": str(samples["sqlite"]), "session": "missing"}], {}),
        r"no session named 'missing'; sessions: 1: 'reddit-python'",
    ),
    "broken parquet footer": (_broken_parquet, r"broken.parquet: not a readable parquet file"),
    "existing export": (_existing_export, r"x.json already exists"),
    "export over the output": (
        lambda samples, tmp_path: ([{"path": str(samples["csv"])}], {"exports": [{"path": str(tmp_path / "o.jsonl")}]}),
        r"o.jsonl: written twice \(output and exports must differ\)",
    ),
    "existing session": (
        _database_with_the_session,
        r"already has a session named 'stack-sql' \(id 2\); set output.overwrite: true or pass --overwrite",
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_check_refuses_inputs_and_targets_without_an_executor(samples, tmp_path, case):
    make, message = REFUSED[case]
    inputs, extra = make(samples, tmp_path)
    with pytest.raises(InvalidInput, match=message):
        FAMILY.check(_config(inputs, tmp_path / "o.jsonl", **extra))


def test_plan_counts_and_cuts_blocks_but_writes_nothing(samples, tmp_path):
    cfg = _config(
        [{"path": str(samples["jsonl"])}, {"path": str(samples["csv"])}],
        tmp_path / "o.jsonl",
        exports=[{"path": str(tmp_path / "o.parquet")}],
    )
    with Executor.in_process() as executor:
        planned = FAMILY.plan(cfg, executor)
    assert planned.report.rows_out == 8 + 4
    assert planned.report.inputs[0].dropped == {"empty input or output": 1}
    assert [(b.start, b.stop, b.count) for b in planned.blocks] == [(0, 12, (8, 4))]
    assert [t.format for t in planned.targets] == ["jsonl", "parquet"]
    assert list(tmp_path.iterdir()) == []
