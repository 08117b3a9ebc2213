"""Sample text datasets for the text family's tests (generated once per run, never modified)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raymerge.text import plan, sources
from raymerge.text.samples import make_samples


@pytest.fixture(scope="session")
def samples(tmp_path_factory) -> dict[str, Path]:
    return make_samples(tmp_path_factory.mktemp("text-samples"))


@pytest.fixture
def small_chunks(monkeypatch):
    """Many chunks and blocks from tiny data, so ranges across chunk and block edges are exercised."""
    monkeypatch.setattr(sources, "CHUNK_BYTES", 300)
    monkeypatch.setattr(sources, "CHUNK_ROWS", 4)
    monkeypatch.setattr(plan, "MIN_BLOCK_ROWS", 7)
    monkeypatch.setattr(plan, "MAX_BLOCK_ROWS", 7)
