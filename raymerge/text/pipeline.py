"""Plan and execute a text merge on Ray.

plan: one task per chunk reads and normalises it; the pairs stay in the object store and only
counts (and, for dedup, 128-bit hashes) come back to the driver, which builds HF's output order
as one small array and cuts it into blocks. execute: one task per block assembles its rows from
the source chunks it needs and writes its parts; one task per target then streams the parts in
order into the file. Exports are staged like the main output and committed just before it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray

from raymerge import storage
from raymerge.errors import InvalidInput
from raymerge.ordering import concat_order, interleave_order
from raymerge.plan import Plan
from raymerge.report import InputReport, Progress, Report
from raymerge.runtime import cluster_cpus
from raymerge.text import blocks as blk
from raymerge.text import sinks
from raymerge.text.combine import Block, plan_blocks
from raymerge.text.config import Config, Target
from raymerge.text.sources import Source, local_sqlite, open_source

MIN_BLOCK_ROWS, MAX_BLOCK_ROWS = 1024, 131_072
DROP_EMPTY = "empty input or output"
DROP_UNUSED = "not reached before the interleave stopped"
DROP_DUPLICATE = "exact duplicate"


@dataclass
class ScannedSource:
    name: str
    source: Source
    chunk_refs: list[Any]  # ObjectRefs of normalised pair tables, one per chunk
    chunk_starts: list[int]
    rows: int


@dataclass
class TargetPlan:
    """One file the run writes: the main output or an export."""

    url: str
    path: str
    storage_options: dict
    format: str
    overwrite: bool
    session: sinks.SessionSpec | None = None
    existing_db: bool = False


@dataclass
class TextPlan(Plan):
    sources: list[ScannedSource] = field(default_factory=list)
    order: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    keep: np.ndarray | None = None
    blocks: list[Block] = field(default_factory=list)
    targets: list[TargetPlan] = field(default_factory=list)


_scan = ray.remote(num_returns=2)(blk.scan_chunk)


def _open_inputs(cfg: Config) -> list[tuple[str, Source]]:
    out = []
    for name, inp in zip(cfg.input_names(), cfg.inputs, strict=True):
        fs, path = storage.resolve(inp.path, inp.storage_options)
        out.append((name, open_source(fs, path, inp.format, inp.split, inp.config, inp.session)))
    return out


def plan(cfg: Config, progress: Progress) -> TextPlan:
    targets = _plan_targets(cfg)
    opened = _open_inputs(cfg)
    want_hashes = cfg.dedup == "exact"
    pending = []
    for (name, src), inp in zip(opened, cfg.inputs, strict=True):
        refs = [_scan.remote(src.fs, c, src.url, inp.input_column, inp.output_column, want_hashes) for c in src.chunks]
        pending.append((name, src, refs))
        progress(f"reading {name}: {src.kind}, {len(src.chunks)} chunk(s)")
    report = Report(kind="text", operation=cfg.operation, output=targets[0].url)
    scanned, hashes = [], []
    for name, src, refs in pending:
        stats: list[blk.ChunkStats] = ray.get([r[0] for r in refs])
        mappings = sorted({s.mapping for s in stats if s.mapping})
        if len(mappings) > 1:
            raise InvalidInput(f"{src.url}: files map columns differently ({'; '.join(mappings)})")
        rows = [s.rows for s in stats]
        report.inputs.append(InputReport(name, src.url, rows_in=sum(s.rows_in for s in stats)))
        report.inputs[-1].drop(DROP_EMPTY, sum(s.dropped for s in stats))
        report.details.setdefault("mapping", {})[name] = mappings[0] if mappings else "(no rows)"
        starts = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(int).tolist() if rows else []
        scanned.append(ScannedSource(name, src, [r[1] for r in refs], starts, sum(rows)))
        if want_hashes:
            hashes.append(np.concatenate([s.hashes for s in stats]) if stats else np.zeros((0, 2), np.uint64))
        progress(f"read {name}: {sum(rows):,} pairs")

    lengths = [s.rows for s in scanned]
    names = [s.name for s in scanned]
    if cfg.operation == "concat":
        order = concat_order(lengths)
    else:
        c = cfg.combine
        order = interleave_order(lengths, c.probabilities, c.seed, c.stopping_strategy, names)
    keep = _first_occurrences(order, lengths, hashes) if want_hashes else None
    used = np.bincount(order.astype(np.int64), minlength=len(lengths))
    kept = np.bincount(order[keep].astype(np.int64), minlength=len(lengths)) if keep is not None else used
    for i, r in enumerate(report.inputs):
        r.rows_out = int(kept[i])
        r.drop(DROP_UNUSED, max(0, lengths[i] - int(used[i])))
        r.drop(DROP_DUPLICATE, int(used[i] - kept[i]))
    report.rows_out = int(kept.sum())
    block_rows = max(MIN_BLOCK_ROWS, min(MAX_BLOCK_ROWS, math.ceil(len(order) / (4 * cluster_cpus()))))
    report.details.update(_describe(cfg, targets))
    return TextPlan(
        config=cfg,
        report=report,
        input_fingerprints=[storage.fingerprint(s.source.fs, _fs_path(s.source)) for s in scanned],
        sources=scanned,
        order=order,
        keep=keep,
        blocks=plan_blocks(order, len(lengths), block_rows),
        targets=targets,
    )


def _fs_path(src: Source) -> str:
    return src.fs._strip_protocol(src.url)


def _describe(cfg: Config, targets: list[TargetPlan]) -> dict[str, Any]:
    d: dict[str, Any] = {"format": targets[0].format}
    if cfg.operation == "interleave":
        c = cfg.combine
        d["stopping_strategy"] = c.stopping_strategy
        if c.probabilities is not None:
            d["probabilities"] = ", ".join(f"{p:g}" for p in c.probabilities)
            d["seed"] = "none" if c.seed is None else str(c.seed)
    if targets[0].session is not None:
        d["session_name"] = targets[0].session.name
    if len(targets) > 1:
        d["exports"] = ", ".join(f"{t.url} ({t.format})" for t in targets[1:])
    if cfg.dedup:
        d["dedup"] = cfg.dedup
    return d


def _first_occurrences(order: np.ndarray, lengths: list[int], hashes: list[np.ndarray]) -> np.ndarray:
    """Keep mask over the output: True at the first appearance of each distinct pair."""
    lens = np.asarray(lengths, np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)[:-1]])
    o = order.astype(np.int64)
    rank = np.empty(len(o), np.int64)
    for s in range(len(lens)):
        pos = np.flatnonzero(o == s)
        rank[pos] = np.arange(len(pos)) % max(lens[s], 1)
    all_hashes = np.concatenate(hashes) if hashes else np.zeros((0, 2), np.uint64)
    keys = np.ascontiguousarray(all_hashes[offsets[o] + rank]).view(np.dtype((np.void, 16))).ravel()
    _, first = np.unique(keys, return_index=True)
    keep = np.zeros(len(o), bool)
    keep[first] = True
    return keep


def _plan_targets(cfg: Config) -> list[TargetPlan]:
    """Main output then exports; check each is new (or a database that may gain the session)."""
    out = cfg.output
    specs: list[tuple[Target, str, dict, bool]] = [(out, out.path, out.storage_options, out.overwrite)]
    specs += [(e, e.path, e.storage_options, e.overwrite) for e in cfg.exports]
    targets, seen = [], set()
    for i, (t, path, options, overwrite) in enumerate(specs):
        fmt = t.resolved_format()
        stage = storage.Staging(
            path, options, overwrite=overwrite, is_file=True, allow_existing=fmt == "sqlite", run_id="check"
        )
        if stage.target_url in seen:
            raise InvalidInput(f"{stage.target_url}: written twice (output and exports must differ)")
        seen.add(stage.target_url)
        if i > 0:
            stage.check()
        tp = TargetPlan(stage.target_url, path, options, fmt, overwrite)
        if fmt == "sqlite":
            assert t.session_name is not None
            tp.existing_db = storage.exists(stage.fs, stage.target)
            if tp.existing_db:
                clash = sinks.session_conflict(local_sqlite(stage.fs, stage.target), t.session_name)
                if clash and not overwrite:
                    raise InvalidInput(
                        f"output {stage.target_url} already has a session named {t.session_name!r} "
                        f"(id {', '.join(map(str, clash))}); set overwrite: true to replace that session"
                    )
            tp.session = sinks.SessionSpec(t.session_name, cfg.operation, len(cfg.inputs), replace=overwrite)
        targets.append(tp)
    return targets


# -- execute --------------------------------------------------------------------------------
@ray.remote
def _write_block(
    order: np.ndarray,
    keep: np.ndarray | None,
    slices: list[blk.SourceSlice],
    fs,
    part_dir: str,
    index: int,
    kinds: list[str],
    *tables,
) -> int:
    table = blk.assemble_block(order, slices, tables)
    if keep is not None:
        table = table.filter(keep)
    sinks.write_parts(table, fs, part_dir, index, kinds)
    return table.num_rows


_assemble = ray.remote(sinks.assemble)


def execute(the_plan: TextPlan, staging: storage.Staging, progress: Progress) -> Report:
    report = the_plan.report
    exports = [
        storage.Staging(
            t.path, t.storage_options, overwrite=t.overwrite, is_file=True, allow_existing=t.format == "sqlite"
        )
        for t in the_plan.targets[1:]
    ]
    opened: list[storage.Staging] = []
    try:
        for e in exports:
            opened.append(e.open())
        part_dir = storage.join(staging.dir, "parts")
        staging.fs.makedirs(part_dir, exist_ok=True)
        kinds = sorted({sinks.PART_KIND[t.format] for t in the_plan.targets})
        progress(f"assembling {len(the_plan.blocks)} block(s) of {report.rows_out:,} pairs")
        written = ray.get(
            [_block_task(the_plan, b, i, staging.fs, part_dir, kinds) for i, b in enumerate(the_plan.blocks)]
        )
        if sum(written) != report.rows_out:
            raise RuntimeError(f"blocks wrote {sum(written)} pairs, the plan expected {report.rows_out}")
        progress(f"writing {len(the_plan.targets)} file(s)")
        stages = [staging, *opened]
        ray.get(
            [
                _assemble.remote(
                    t.format,
                    staging.fs,
                    [sinks.part_path(part_dir, sinks.PART_KIND[t.format], i) for i in range(len(the_plan.blocks))],
                    st.fs,
                    st.path,
                    t.session,
                    st.target if t.existing_db else None,
                )
                for t, st in zip(the_plan.targets, stages, strict=True)
            ]
        )
        staging.fs.rm(part_dir, recursive=True)
        for e in opened:
            e.commit()
    finally:
        for e in opened:
            e.abort()
    report.files_written = [storage.basename(staging.target)] + [e.target_url for e in opened]
    return report


def _block_task(the_plan: TextPlan, b: Block, index: int, fs, part_dir: str, kinds: list[str]):
    slices, refs = [], []
    for s, src in enumerate(the_plan.sources):
        picked = blk.chunks_for(b.first[s], b.count[s], src.rows, src.chunk_starts)
        slices.append(blk.SourceSlice(s, b.first[s], b.count[s], src.rows, tuple(src.chunk_starts[i] for i in picked)))
        refs += [src.chunk_refs[i] for i in picked]
    keep = None if the_plan.keep is None else the_plan.keep[b.start : b.stop]
    return _write_block.remote(the_plan.order[b.start : b.stop], keep, slices, fs, part_dir, index, kinds, *refs)
