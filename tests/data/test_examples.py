"""Every docstring example of `raymerge.data`'s blocks runs as written (doctest), on the run's Ray session."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "module", ["raymerge.data", "raymerge.text.raydata", "raymerge.webdataset.raydata", "raymerge.lerobot.raydata"]
)
def test_docstring_examples_run(ray_address, module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_every_public_block_has_an_example():
    import raymerge.data as rd

    for name in rd.EXPORTS:
        assert ">>>" in (getattr(rd, name).__doc__ or ""), name


def test_importing_the_facade_loads_no_family():
    import subprocess
    import sys

    code = (
        "import sys, raymerge.data; "
        "print(sorted(m for m in ('ray.data', 'av', 'polars', 'raymerge.text', 'raymerge.webdataset', "
        "'raymerge.lerobot') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
