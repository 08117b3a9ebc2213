"""The two passes of a text merge: a counting pass that keeps no row, then blocks gathered from the sources.

Memory is bounded by construction, which these tests check (a Ray session of its own, with a tiny object store,
is not possible inside the suite's shared one): the plan holds counts, never rows or handles of rows; a run of
blocks holds at most two normalised chunks per source and reads each chunk once per pass over it. Sources this
small would be held from the scan to the write (`plan.HOLD_BELOW_BYTES`): `streamed` holds none.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, interleave_datasets

from raymerge import api
from raymerge.executor import Executor
from raymerge.families import load_config
from raymerge.text import FAMILY, gather, plan, scan
from raymerge.text.execute import _runs
from raymerge.text.samples import pairs, write_finefoundry_db, write_hub_snapshot, write_jsonl
from raymerge.text.sources import fingerprint
from tests.helpers import assert_rejected


@pytest.fixture
def streamed(monkeypatch):
    """No source held: every one is counted, then read again by the gather."""
    monkeypatch.setattr(plan, "HOLD_BELOW_BYTES", 0)


def _config(inputs, out, **extra):
    return load_config({"kind": "text", "operation": "concat", "inputs": inputs, "output": {"path": str(out)}, **extra})


def _refuse_reads(monkeypatch):
    """Any read of a chunk's rows fails the test."""

    def read(*args, **kwargs):
        raise AssertionError("a row was read")

    monkeypatch.setattr(scan, "read_chunk", read)


def test_plan_of_whole_rows_counts_parquet_arrow_and_sqlite_without_reading_a_row(
    samples, streamed, monkeypatch, tmp_path
):
    inputs = [
        {"path": str(samples["hub"])},  # parquet
        {"path": str(samples["save_to_disk"])},  # Arrow streams
        {"path": str(samples["sqlite"]), "session": 1},
    ]
    cfg = _config(inputs, tmp_path / "o.parquet", columns="keep")
    expected = FAMILY.plan(cfg, Executor.in_process())
    _refuse_reads(monkeypatch)
    planned = FAMILY.plan(cfg, Executor.in_process())
    assert [s.rows for s in planned.sources] == [s.rows for s in expected.sources]
    assert all(s.rows > 0 for s in planned.sources)
    assert planned.schema == expected.schema
    assert not tmp_path.joinpath("o.parquet").exists()


def test_a_scan_is_needed_where_normalisation_may_drop_rows(samples, streamed, monkeypatch, tmp_path):
    """Pairs may lose rows with an empty side, so even parquet is read (and let go) to count them."""
    _refuse_reads(monkeypatch)
    with pytest.raises(AssertionError, match="a row was read"):
        FAMILY.plan(_config([{"path": str(samples["hub"])}], tmp_path / "o.jsonl"), Executor.in_process())


def test_the_plan_holds_no_rows_nor_handles_of_rows(ray_address, samples, streamed, small_chunks, tmp_path):
    inputs = [{"path": str(samples[k])} for k in ("jsonl", "hub", "save_to_disk", "csv")]
    with Executor.ray() as executor:
        planned = FAMILY.plan(_config(inputs, tmp_path / "o.jsonl", dedup="exact"), executor)
    assert len(planned.blocks) > 1 and sum(len(s.source.chunks) for s in planned.sources) > 4
    for s in planned.sources:
        assert not s.held and s.chunk_tables == []
        assert not [v for v in vars(s).values() if isinstance(v, pa.Table) or type(v).__name__ == "ObjectRef"]


def _counting_reads(monkeypatch) -> list[tuple[str, int, int]]:
    reads: list[tuple[str, int, int]] = []
    real = gather.scan_chunk

    def read(fs, chunk, where, spec):
        reads.append((chunk.path, chunk.start, chunk.stop))
        return real(fs, chunk, where, spec)

    monkeypatch.setattr(gather, "scan_chunk", read)
    return reads


@pytest.mark.parametrize("operation", ["concat", "interleave"])
def test_a_run_holds_two_chunks_per_source_and_reads_each_once_per_pass(
    samples, streamed, small_chunks, monkeypatch, tmp_path, operation
):
    inputs = [{"path": str(samples["jsonl"])}, {"path": str(samples["hub"])}]
    extra = {"interleave": {"stopping_strategy": "all_exhausted"}} if operation == "interleave" else {}
    planned = FAMILY.plan(_config(inputs, tmp_path / "o.jsonl", operation=operation, **extra), Executor.in_process())
    (run,) = _runs(planned, 1)
    reads = _counting_reads(monkeypatch)
    held_at_most = 0
    real_held = gather._Held

    class Watched(real_held):  # type: ignore[misc, valid-type]
        def table(self, s, k):
            nonlocal held_at_most
            out = super().table(s, k)
            held_at_most = max(held_at_most, *(len(t) for t in self.tables))
            return out

    monkeypatch.setattr(gather, "_Held", Watched)
    rows = sum(t.num_rows for _, t in gather.gather(run))
    assert rows == planned.report.rows_out
    assert held_at_most <= gather.HELD_PER_SOURCE
    chunks = sum(len(s.source.chunks) for s in planned.sources)
    passes = max(1, -(-len(planned.order) // max(1, min(s.rows for s in planned.sources))))
    assert len(reads) <= chunks * (passes + 1)
    if operation == "concat":
        assert sorted(reads) == sorted(set(reads)) and len(reads) == chunks


@pytest.fixture
def with_drops(tmp_path):
    """Three sources with every fourth pair's output empty (dropped); b opens with a's first pair (for dedup)."""
    tables = {"a": pairs("a", 30), "b": pa.concat_tables([pairs("a", 1), pairs("b", 20)]), "c": pairs("c", 9)}
    kept = {}
    for k, t in tables.items():
        out = ["" if i % 4 == 1 else v for i, v in enumerate(t["output"].to_pylist())]
        tables[k] = t.set_column(1, "output", pa.array(out))
        kept[k] = tables[k].filter(pa.array([bool(v) for v in out]))
    root = tmp_path / "in"
    inputs = [
        {"path": str(write_jsonl(root / "a.jsonl", tables["a"]))},
        {"path": str(write_hub_snapshot(root / "hub", {"train": tables["b"]}, shards=2))},
        {"path": str(write_finefoundry_db(root / "ff.db", {"c": tables["c"]}))},
    ]
    return inputs, kept


@pytest.mark.parametrize("dedup", [None, "exact"])
@pytest.mark.parametrize(
    "interleave",
    [
        {"stopping_strategy": "all_exhausted"},
        {"probabilities": [0.5, 0.2, 0.3], "seed": 3, "stopping_strategy": "all_exhausted"},
        {"probabilities": [0.2, 0.5, 0.3], "seed": 11},
    ],
)
def test_streamed_interleave_with_drops_and_dedup_is_in_hf_order(
    ray_address, with_drops, streamed, small_chunks, tmp_path, interleave, dedup
):
    inputs, kept = with_drops
    cfg = {
        "kind": "text",
        "operation": "interleave",
        "interleave": interleave,
        "inputs": inputs,
        "output": {"path": str(tmp_path / "o.jsonl")},
    }
    if dedup:
        cfg["dedup"] = dedup
    report = api.run(cfg, executor="ray")
    hf = interleave_datasets([Dataset(kept[k]) for k in ("a", "b", "c")], **interleave)
    expected = list(zip(hf["input"], hf["output"], strict=True))
    if dedup:
        expected = list(dict.fromkeys(expected))
    lines = (tmp_path / "o.jsonl").read_text().splitlines()
    assert [(r["input"], r["output"]) for r in map(json.loads, lines)] == expected
    assert report.rows_out == len(expected)
    assert [i.rows_in for i in report.inputs] == [30, 21, 9]


def test_held_and_streamed_runs_on_either_executor_write_the_same_bytes(
    ray_address, with_drops, small_chunks, monkeypatch, tmp_path
):
    inputs, _ = with_drops
    cfg = {"kind": "text", "operation": "interleave", "interleave": {"stopping_strategy": "all_exhausted"}}
    cfg["inputs"] = inputs
    with Executor.ray() as executor:
        held = FAMILY.plan(_config(inputs, tmp_path / "p.jsonl"), executor)
        assert all(s.held for s in held.sources)
    runs = (("held", plan.HOLD_BELOW_BYTES, "ray"), ("streamed", 0, "ray"), ("in-process", 0, "in-process"))
    for name, hold, executor in runs:
        monkeypatch.setattr(plan, "HOLD_BELOW_BYTES", hold)
        api.run({**cfg, "output": {"path": str(tmp_path / f"{name}.parquet")}}, executor=executor)
    written = {(tmp_path / f"{name}.parquet").read_bytes() for name, _, _ in runs}
    assert len(written) == 1


@pytest.mark.parametrize("executor", ["ray", "in-process"])
def test_pages_broken_behind_a_good_footer_are_refused_by_the_gather(ray_address, streamed, tmp_path, executor):
    """Whole rows are counted from the footer; the broken pages show when the gather reads them."""
    path = tmp_path / "in" / "broken.parquet"
    path.parent.mkdir()
    pq.write_table(pairs("p", 2000), path, compression="none")
    data = bytearray(path.read_bytes())
    data[1000:60000:7] = b"\xff" * len(range(1000, 60000, 7))
    path.write_bytes(bytes(data))
    out = tmp_path / "out" / "o.jsonl"
    cfg = {"kind": "text", "operation": "concat", "columns": "keep", "inputs": [{"path": str(path)}]}
    cfg["output"] = {"path": str(out)}
    assert_rejected(cfg, r"broken.parquet: not a readable parquet file", [path], out, executor=executor)


def test_the_smallest_sources_are_held_up_to_the_budget(samples, monkeypatch, tmp_path):
    inputs = [{"path": str(samples[k])} for k in ("jsonl", "hub", "csv", "save_to_disk")]
    opened = [src for _, src in plan.open_inputs(_config(inputs, tmp_path / "o.jsonl"))]
    sizes = [fingerprint(src)["bytes"] for src in opened]
    smallest = sorted(range(len(sizes)), key=sizes.__getitem__)
    monkeypatch.setattr(plan, "HOLD_BELOW_BYTES", sizes[smallest[0]] + sizes[smallest[1]])
    assert plan.held_sources(opened) == set(smallest[:2])
    monkeypatch.setattr(plan, "HOLD_BELOW_BYTES", sizes[smallest[0]] - 1)
    assert plan.held_sources(opened) == set()
