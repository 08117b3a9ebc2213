"""Random configs and random bytes through the CLI, in-process on the suite's Ray session.

Whatever comes in, the answer is exit 0, or exit 1/2 with exactly one `raymerge: error:` line and
no traceback; and nothing is written outside the output (inputs byte-identical, no staging left).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raymerge.cli import main
from tests.helpers import tree_digest

OPERATIONS = ["concat", "interleave", "join", "blend", "reshard", "merge", "split", "convert", "union"]
# Mostly valid kind/operation pairs, so most examples get past the schema to the inputs' bytes.
VALID = [("text", "concat"), ("text", "interleave"), ("webdataset", "concat"), ("webdataset", "reshard")]
VALID += [("webdataset", "join"), ("webdataset", "blend"), ("lerobot", "merge")]
kind_operation = st.one_of(
    st.sampled_from(VALID),
    st.tuples(st.sampled_from(["text", "webdataset", "lerobot", "audio"]), st.sampled_from(OPERATIONS)),
)
EXTENSIONS = ["", ".jsonl", ".json", ".parquet", ".csv", ".db", ".tar", ".tar.gz", ".mp4", ".yaml"]
# Starts of real files, so the bytes after them reach deeper than the first format check.
PREFIXES = [b"", b'{"input": "q", "output": "a"}\n', b"PAR1", b"SQLite format 3\x00", b"\x1f\x8b\x08", b"ustar"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.text(max_size=12), st.floats(allow_nan=True))
extras = st.dictionaries(
    st.sampled_from(["maxcount", "seed", "format", "session", "split", "episodes", "nonmatch", "weight", "colour"]),
    scalars,
    max_size=1,
)
rare_extras = st.one_of(st.just({}), st.just({}), extras)
inputs = st.fixed_dictionaries(
    {
        "ext": st.sampled_from(EXTENSIONS),
        "data": st.tuples(st.sampled_from(PREFIXES), st.binary(max_size=600)).map(b"".join),
        "folder": st.booleans(),
        "extra": rare_extras,
    }
)
configs = st.fixed_dictionaries(
    {
        "kind_operation": kind_operation,
        "inputs": st.lists(inputs, min_size=1, max_size=2),
        "out_ext": st.sampled_from(["", ".jsonl", ".parquet", ".db", ".json"]),
        "output_extra": rare_extras,
        "top_extra": st.dictionaries(
            st.sampled_from(["interleave", "dedup", "seed", "split", "junk"]), scalars, max_size=1
        ),
        "raw_yaml": st.one_of(st.none(), st.none(), st.none(), st.binary(max_size=80)),
    }
)

_counter = itertools.count()


def _materialise(root: Path, spec: dict[str, Any]) -> tuple[Path, Path]:
    """Write the inputs and the config file below root; return (config, output path)."""
    entries = []
    for i, inp in enumerate(spec["inputs"]):
        name = f"in{i}{inp['ext']}"
        path = root / f"dir{i}" / name if inp["folder"] else root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(inp["data"])
        entries.append({"path": str(path.parent if inp["folder"] else path), **inp["extra"]})
    out = root / f"out{spec['out_ext']}"
    cfg_path = root / "run.yaml"
    if spec["raw_yaml"] is not None:
        cfg_path.write_bytes(spec["raw_yaml"])
    else:
        cfg = {
            "kind": spec["kind_operation"][0],
            "operation": spec["kind_operation"][1],
            "inputs": entries,
            "output": {"path": str(out), **spec["output_extra"]},
            **spec["top_extra"],
        }
        cfg_path.write_text(yaml.safe_dump(cfg))
    return cfg_path, out


def _check_answer(result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 1, 2)
    assert "Traceback" not in result.stderr + result.stdout
    if result.exit_code:
        said = [line for line in result.stderr.splitlines() if line.startswith("raymerge:")]
        assert len(said) == 1 and said[0].startswith("raymerge: error: "), result.stderr


def _outside(root: Path, out: Path) -> dict[str, str]:
    """Every file below root that is not part of the output."""
    name = out.name
    return {k: v for k, v in tree_digest(root).items() if k != name and not k.startswith(f"{name}/")}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=configs)
def test_random_configs_and_bytes_never_crash_or_write_outside_the_output(ray_address, tmp_path, spec):
    root = tmp_path / f"case{next(_counter)}"
    root.mkdir()
    cfg, out = _materialise(root, spec)
    before = _outside(root, out)
    runner = CliRunner()
    for args in (["run", str(cfg), "--quiet"], ["inspect", spec_input(root, spec)]):
        _check_answer(runner.invoke(main, args))
    assert _outside(root, out) == before
    assert [p.name for p in root.iterdir() if ".raymerge" in p.name] == []


def spec_input(root: Path, spec: dict[str, Any]) -> str:
    first = spec["inputs"][0]
    return str(root / "dir0" if first["folder"] else root / f"in0{first['ext']}")
