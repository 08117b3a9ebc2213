"""Check and plan a text merge: everything a run decides before it writes a byte.

check: the targets may be written and every input opens (format, split, session, footers), from
listings and headers only, before any executor starts. plan: one task per chunk reads and normalises
it; the pairs stay with the executor and only counts (and, for dedup, 128-bit hashes) come back to
the driver, which builds HF's output order as one small array and cuts it into blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raymerge import storage
from raymerge.errors import InvalidInput
from raymerge.executor import Executor
from raymerge.ordering import hf_indices
from raymerge.plan import Plan
from raymerge.report import InputReport, Report
from raymerge.text import finefoundry, tasks
from raymerge.text.combine import Block, output_order, plan_blocks
from raymerge.text.config import Config, Target
from raymerge.text.sources import Source, open_source

MIN_BLOCK_ROWS, MAX_BLOCK_ROWS = 1024, 131_072
BLOCKS_PER_CPU = 4  # enough blocks to balance uneven ones over the cores
DROP_EMPTY = "empty input or output"
DROP_UNUSED = "not reached before the interleave stopped"
DROP_DUPLICATE = "exact duplicate"


@dataclass
class ScannedSource:
    """An input after its scan: where each chunk's pairs are (executor handles) and which source rows
    each chunk starts at, so that block tasks can be sent exactly the chunks they need."""

    name: str
    source: Source
    chunk_tables: list[Any]
    chunk_starts: list[int]
    rows: int


@dataclass
class TargetPlan:
    """One file the run writes: the main output or an export."""

    url: str
    path: str
    storage_options: dict[str, Any]
    format: str
    overwrite: bool
    session: finefoundry.SessionSpec | None = None
    existing_db: bool = False


@dataclass
class TextPlan(Plan[Config]):
    """The scanned sources, HF's output order (the source of each row), the rows kept by dedup, the blocks
    the order is cut into, and the files to write."""

    sources: list[ScannedSource] = field(default_factory=list)
    order: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    keep: np.ndarray | None = None
    blocks: list[Block] = field(default_factory=list)
    targets: list[TargetPlan] = field(default_factory=list)


def open_inputs(cfg: Config) -> list[tuple[str, Source]]:
    """Every input resolved to its chunks, with its name in the report."""
    out = []
    for name, inp in zip(cfg.input_names(), cfg.inputs, strict=True):
        fs, path = storage.resolve(inp.path, inp.storage_options)
        out.append((name, open_source(fs, path, inp.format, inp.split, inp.config, inp.session)))
    return out


def source_path(src: Source) -> str:
    """The source's path inside its filesystem, for listings."""
    return src.fs._strip_protocol(src.url)


def check(cfg: Config) -> int:
    """Refuse what can be refused without reading payload (targets, then inputs); returns the inputs' bytes
    from their listings, which decide whether Ray pays for itself."""
    check_targets(cfg)
    return sum(storage.fingerprint(src.fs, source_path(src))["bytes"] for _, src in open_inputs(cfg))


def check_targets(cfg: Config) -> list[TargetPlan]:
    """Main output then exports; check each is new (or a database that may gain the session)."""
    out = cfg.output
    specs: list[tuple[Target, str, dict[str, Any], bool]] = [(out, out.path, out.storage_options, out.overwrite)]
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
                db = finefoundry.local_sqlite(stage.fs, stage.target)
                clash = finefoundry.session_conflict(db, t.session_name)
                if clash and not overwrite:
                    raise InvalidInput(
                        f"output {stage.target_url} already has a session named {t.session_name!r} "
                        f"(id {', '.join(map(str, clash))}); set overwrite: true to replace that session"
                    )
            tp.session = finefoundry.SessionSpec(t.session_name, cfg.operation, len(cfg.inputs), replace=overwrite)
        targets.append(tp)
    return targets


def plan(cfg: Config, executor: Executor) -> TextPlan:
    """Scan every chunk with the executor, then decide the output order, dedup and blocks on the driver."""
    targets = check_targets(cfg)
    report = Report(kind="text", operation=cfg.operation, output=targets[0].url)
    scanned, hashes = _scan(cfg, open_inputs(cfg), executor, report)
    lengths = [s.rows for s in scanned]
    order = output_order(cfg, lengths)
    keep = _first_occurrences(order, lengths, hashes) if cfg.dedup == "exact" else None
    _count_output(report, order, keep, lengths)
    block_rows = max(MIN_BLOCK_ROWS, min(MAX_BLOCK_ROWS, math.ceil(len(order) / (BLOCKS_PER_CPU * executor.cpus()))))
    report.details.update(_describe(cfg, targets))
    return TextPlan(
        config=cfg,
        report=report,
        input_fingerprints=[storage.fingerprint(s.source.fs, source_path(s.source)) for s in scanned],
        sources=scanned,
        order=order,
        keep=keep,
        blocks=plan_blocks(order, len(lengths), block_rows),
        targets=targets,
    )


def _scan(
    cfg: Config, opened: list[tuple[str, Source]], executor: Executor, report: Report
) -> tuple[list[ScannedSource], list[np.ndarray]]:
    """One scan task per chunk, all submitted before any result is awaited; the report gains each input's
    counts. Returns the scanned sources and, for dedup, each source's pair hashes."""
    want_hashes = cfg.dedup == "exact"
    pending = []
    for (name, src), inp in zip(opened, cfg.inputs, strict=True):
        handles = [
            executor.submit(
                tasks.scan_chunk, src.fs, c, src.url, inp.input_column, inp.output_column, want_hashes, num_returns=2
            )
            for c in src.chunks
        ]
        pending.append((name, src, handles))
        executor.progress(f"reading {name}: {src.kind}, {len(src.chunks)} chunk(s)")
    scanned, hashes = [], []
    for name, src, handles in pending:
        stats: list[tasks.ChunkStats] = executor.get([h[0] for h in handles])
        mappings = sorted({s.mapping for s in stats if s.mapping})
        if len(mappings) > 1:
            raise InvalidInput(f"{src.url}: files map columns differently ({'; '.join(mappings)})")
        rows = [s.rows for s in stats]
        report.inputs.append(InputReport(name, src.url, rows_in=sum(s.rows_in for s in stats)))
        report.inputs[-1].drop(DROP_EMPTY, sum(s.dropped for s in stats))
        report.details.setdefault("mapping", {})[name] = mappings[0] if mappings else "(no rows)"
        starts = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(int).tolist() if rows else []
        scanned.append(ScannedSource(name, src, [h[1] for h in handles], starts, sum(rows)))
        if want_hashes:
            hashes.append(np.concatenate([s.hashes for s in stats]) if stats else np.zeros((0, 2), np.uint64))
        executor.progress(f"read {name}: {sum(rows):,} pairs")
    return scanned, hashes


def _count_output(report: Report, order: np.ndarray, keep: np.ndarray | None, lengths: list[int]) -> None:
    """Rows out per input, and why the others were dropped: never reached, or duplicates."""
    used = np.bincount(order.astype(np.int64), minlength=len(lengths))
    kept = np.bincount(order[keep].astype(np.int64), minlength=len(lengths)) if keep is not None else used
    for i, r in enumerate(report.inputs):
        r.rows_out = int(kept[i])
        r.drop(DROP_UNUSED, max(0, lengths[i] - int(used[i])))
        r.drop(DROP_DUPLICATE, int(used[i] - kept[i]))
    report.rows_out = int(kept.sum())


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
    all_hashes = np.concatenate(hashes) if hashes else np.zeros((0, 2), np.uint64)
    keys = np.ascontiguousarray(all_hashes[hf_indices(order, lengths)]).view(np.dtype((np.void, 16))).ravel()
    _, first = np.unique(keys, return_index=True)
    keep = np.zeros(len(order), bool)
    keep[first] = True
    return keep
