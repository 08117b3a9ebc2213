"""Every family keeps the written contract (`raymerge.families.Family`), and a rejected config never waits
for Ray: it is refused before Ray is even imported."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest

from raymerge.config import BaseConfig
from raymerge.families import FAMILIES, Family, family


def _members() -> dict[str, inspect.Signature | None]:
    names = [n for n in vars(Family) if not n.startswith("_")] + list(Family.__annotations__)
    return {n: (inspect.signature(getattr(Family, n)) if callable(getattr(Family, n, None)) else None) for n in names}


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_family_implements_the_contract(kind):
    fam = family(kind)
    assert fam.kind == kind
    assert issubclass(fam.config, BaseConfig)
    for name, signature in _members().items():
        assert hasattr(fam, name), f"{kind} lacks {name}"
        if signature is not None:
            got = inspect.signature(getattr(fam, name))
            wanted = [p for p in signature.parameters if p != "self"]
            assert list(got.parameters) == wanted, f"{kind}.{name}{got} does not match {name}{signature}"


REJECTED = {
    "bad key": (
        {"kind": "text", "operation": "concat", "inputs": [{"path": "x.jsonl", "colour": 1}], "output": {"path": "o"}},
        "inputs[0].colour: unknown key",
    ),
    "missing text input": (
        {"kind": "text", "operation": "concat", "inputs": [{"path": "missing.jsonl"}], "output": {"path": "o.jsonl"}},
        "missing.jsonl",
    ),
    "missing shards": (
        {"kind": "webdataset", "operation": "concat", "inputs": [{"path": "no-shards"}], "output": {"path": "o"}},
        "no-shards",
    ),
    "missing lerobot input": (
        {"kind": "lerobot", "operation": "merge", "inputs": [{"path": "no-robot"}], "output": {"path": "o"}},
        "no-robot",
    ),
}

_PROBE = """
import json, sys
from raymerge import api
from raymerge.errors import InvalidInput
try:
    api.run(json.loads(sys.argv[1]))
except InvalidInput as e:
    print(json.dumps({"message": str(e), "ray_imported": "ray" in sys.modules}))
"""


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rejected_config_exits_before_ray(tmp_path, case):
    cfg, message = REJECTED[case]
    env_free = {"RAYMERGE_EXECUTOR": "", "RAY_ADDRESS": ""}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(cfg)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, **env_free},
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert message in result["message"]
    assert result["ray_imported"] is False
    assert list(tmp_path.iterdir()) == []
