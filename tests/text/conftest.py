"""Sample text datasets for the text family's tests (generated once per run, never modified)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raymerge.text.samples import make_samples


@pytest.fixture(scope="session")
def samples(tmp_path_factory) -> dict[str, Path]:
    return make_samples(tmp_path_factory.mktemp("text-samples"))
