"""Every example config gives byte-identical output on Ray and in this process (the executor changes where
tasks run, never what they write)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from raymerge import api
from raymerge.demo import make_samples
from raymerge.families import load_config
from tests.helpers import tree_digest

ROOT = Path(__file__).resolve().parent.parent
LOCAL_CONFIGS = [p for p in sorted((ROOT / "configs").glob("*.yaml")) if "s3://" not in p.read_text()]


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    make_samples(root / "demo-data")
    return root


def _outputs(config: Path, where: Path) -> list[str]:
    """`--set` overrides that send the output and every export of `config` below `where`."""
    cfg = load_config(config, environ={})
    sets = [f"output.path={where / Path(cfg.output.path).name}"]
    for i, export in enumerate(getattr(cfg, "exports", []) or []):
        sets.append(f"exports.{i}.path={where / Path(export.path).name}")
    return sets


def _content(root: Path) -> dict[str, object]:
    """File digests without what names the run (`raymerge.json`, Energon's `index.uuid`); a database by its
    pairs, since SQLite stamps the session's creation time."""
    out: dict[str, object] = {}
    for name, digest in tree_digest(root).items():
        if name.endswith(("raymerge.json", "index.uuid")):  # the run's own id and timings
            continue
        if name.endswith(".db"):
            with sqlite3.connect(root / name) as con:
                out[name] = con.execute("SELECT input_text, output_text FROM scraped_pairs ORDER BY id").fetchall()
        else:
            out[name] = digest
    return out


@pytest.mark.parametrize("config", LOCAL_CONFIGS, ids=[p.stem for p in LOCAL_CONFIGS])
def test_ray_and_in_process_write_the_same_bytes(ray_address, demo_data, monkeypatch, config):
    monkeypatch.chdir(demo_data)
    results = {}
    for mode in ("ray", "in-process"):
        where = demo_data / "out" / config.stem / mode
        where.mkdir(parents=True)
        report = api.run(config, overrides=_outputs(config, where), executor=mode)
        assert report.details["executor"] == mode
        assert report.rows_out > 0
        results[mode] = _content(where)
    assert results["ray"] and results["ray"] == results["in-process"]
