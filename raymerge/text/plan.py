"""Check and plan a text merge: everything a run decides before it writes a byte.

check: the targets may be written and every input opens (format, split, session, footers), from
listings and headers only, before any executor starts. plan: the counting pass, one task per chunk that keeps
nothing (`scan.count_chunk`): only counts of normalised rows (and, for dedup, 128-bit hashes; for whole rows,
the schema) come back to the driver, which aligns the sources' features, builds HF's output order as one small
array and cuts it into blocks. No row is held anywhere between the plan and the write: the write gathers each
block from the sources again (`gather`). The exception is small sources, up to `HOLD_BELOW_BYTES` in all
(smallest first): their scan keeps the normalised rows with the executor and the gather takes them from there.
Holding that much is cheaper than what a second read costs: the scan's work again for every pass over a source
that an interleave cycles through, and on object storage a second GET of every byte.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from raymerge import storage
from raymerge.errors import InvalidInput
from raymerge.executor import Executor
from raymerge.ordering import hf_indices
from raymerge.plan import Plan
from raymerge.report import InputReport, Report
from raymerge.text import features, scan
from raymerge.text.columns import PAIR_SCHEMA, role_table
from raymerge.text.combine import Block, output_order, plan_blocks
from raymerge.text.config import Config, TextInput
from raymerge.text.gather import SourceRows
from raymerge.text.sources import Source, fingerprint, open_source
from raymerge.text.targets import TargetPlan, check_targets

MIN_BLOCK_ROWS, MAX_BLOCK_ROWS = 1024, 131_072
BLOCKS_PER_CPU = 4  # enough blocks to balance uneven ones over the cores
HOLD_BELOW_BYTES = 256 << 20  # input bytes of the sources held from the scan to the write, at most
DROP_UNUSED = "not reached before the interleave stopped"
DROP_DUPLICATE = "exact duplicate"

__all__ = ["TargetPlan", "TextPlan", "check", "check_targets", "open_inputs", "plan"]


@dataclass
class ScannedSource:
    """An input after the counting pass: which normalised source row each chunk starts at, so that a block
    reads exactly the chunks holding its rows, and how to read them again (`spec`)."""

    name: str
    source: Source
    spec: scan.ScanSpec
    chunk_starts: list[int]
    rows: int
    schemas: list[pa.Schema | None] = field(default_factory=list)
    chunk_tables: list[Any] = field(default_factory=list)  # executor handles of a held source's chunks

    @property
    def held(self) -> bool:
        return bool(self.chunk_tables)

    def rows_source(self) -> SourceRows:
        """What the gather needs to read this source's rows again (no hashes: dedup is decided)."""
        spec = dataclasses.replace(self.spec, hashes=False)
        src = self.source
        return SourceRows(src.fs, src.url, spec, tuple(src.chunks), tuple(self.chunk_starts), self.rows)


@dataclass
class TextPlan(Plan[Config]):
    """The scanned sources, HF's output order (the source of each row), the rows kept by dedup, the blocks
    the order is cut into, the schema of the rows written, and the files and folders to write."""

    sources: list[ScannedSource] = field(default_factory=list)
    order: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    keep: np.ndarray | None = None
    blocks: list[Block] = field(default_factory=list)
    targets: list[TargetPlan] = field(default_factory=list)
    schema: pa.Schema = PAIR_SCHEMA


def open_inputs(cfg: Config) -> list[tuple[str, Source]]:
    """Every input resolved to its chunks, with its name in the report."""
    out = []
    for name, inp in zip(cfg.input_names(), cfg.inputs, strict=True):
        fs, path = storage.resolve(inp.path, inp.storage_options)
        out.append((name, open_source(fs, path, inp.format, inp.split, inp.config, inp.session_choice())))
    return out


def scan_spec(cfg: Config, inp: TextInput) -> scan.ScanSpec:
    """What the counting and gather tasks of one input make of its rows."""
    r = inp.roles
    roles = role_table(r.user, r.assistant, r.system) if r is not None else role_table()
    return scan.ScanSpec(cfg.columns == "keep", inp.input_column, inp.output_column, roles, cfg.dedup == "exact")


def check(cfg: Config) -> int:
    """Refuse what can be refused without reading payload (targets, then inputs); returns the inputs' bytes
    from their listings, which decide whether Ray pays for itself."""
    check_targets(cfg)
    return sum(fingerprint(src)["bytes"] for _, src in open_inputs(cfg))


def plan(cfg: Config, executor: Executor) -> TextPlan:
    """Count every chunk with the executor, then decide the schema, the output order, dedup and blocks on the
    driver."""
    targets = check_targets(cfg)
    report = Report(kind="text", operation=cfg.operation, output=targets[0].url)
    scanned, hashes = _scan(cfg, open_inputs(cfg), executor, report)
    schema = merged_schema(scanned) if cfg.columns == "keep" else PAIR_SCHEMA
    lengths = [s.rows for s in scanned]
    order = output_order(cfg, lengths)
    keep = _first_occurrences(order, lengths, hashes) if cfg.dedup == "exact" else None
    _count_output(report, order, keep, lengths)
    block_rows = max(MIN_BLOCK_ROWS, min(MAX_BLOCK_ROWS, math.ceil(len(order) / (BLOCKS_PER_CPU * executor.cpus()))))
    report.details.update(_describe(cfg, targets, schema))
    return TextPlan(
        config=cfg,
        report=report,
        input_fingerprints=[fingerprint(s.source) for s in scanned],
        sources=scanned,
        order=order,
        keep=keep,
        blocks=plan_blocks(order, len(lengths), block_rows),
        targets=targets,
        schema=schema,
    )


def _scan(
    cfg: Config, opened: list[tuple[str, Source]], executor: Executor, report: Report
) -> tuple[list[ScannedSource], list[np.ndarray]]:
    """One counting task per chunk, all submitted before any result is awaited; the report gains each input's
    counts. Returns the counted sources and, for dedup, each source's pair hashes."""
    pending = []
    held = held_sources([src for _, src in opened])
    for i, ((name, src), inp) in enumerate(zip(opened, cfg.inputs, strict=True)):
        spec = scan_spec(cfg, inp)
        if i in held:
            handles = [executor.submit(scan.scan_chunk, src.fs, c, src.url, spec, num_returns=2) for c in src.chunks]
        else:
            handles = [[executor.submit(scan.count_chunk, src.fs, c, src.url, spec)] for c in src.chunks]
        pending.append((i, name, src, spec, handles))
        executor.progress(f"counting {name}: {src.kind}, {len(src.chunks)} chunk(s)")
    scanned, hashes = [], []
    for i, name, src, spec, handles in pending:
        stats: list[scan.ChunkStats] = executor.get([h[0] for h in handles])
        mappings = sorted({s.mapping for s in stats if s.mapping})
        if len(mappings) > 1:
            raise InvalidInput(f"{src.url}: files map columns differently ({'; '.join(mappings)})")
        rows = [s.rows for s in stats]
        report.inputs.append(InputReport(name, src.url, rows_in=sum(s.rows_in for s in stats)))
        unknown: dict[str, int] = {}
        for s in stats:
            for reason, n in s.dropped.items():
                report.inputs[-1].drop(reason, n)
            for role, n in s.unknown_roles.items():
                unknown[role] = unknown.get(role, 0) + n
        if unknown:
            shown = ", ".join(f"{r!r} ({n} turns)" for r, n in sorted(unknown.items(), key=lambda x: -x[1])[:10])
            report.warnings.append(
                f"{name}: turns with roles that are neither user, assistant, system nor tool were not paired: "
                f"{shown}; name them with inputs[{i}].roles"
            )
        if cfg.columns == "pairs":
            report.details.setdefault("mapping", {})[name] = mappings[0] if mappings else "(no rows)"
        starts = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(int).tolist() if rows else []
        tables = [h[1] for h in handles if len(h) > 1]
        scanned.append(ScannedSource(name, src, spec, starts, sum(rows), [s.schema for s in stats], tables))
        if cfg.dedup == "exact":
            hashes.append(np.concatenate([s.hashes for s in stats]) if stats else np.zeros((0, 2), np.uint64))
        executor.progress(f"counted {name}: {sum(rows):,} {'rows' if cfg.columns == 'keep' else 'pairs'}")
    return scanned, hashes


def held_sources(sources: list[Source]) -> set[int]:
    """The sources whose scan keeps their rows: the smallest, up to `HOLD_BELOW_BYTES` of input in all."""
    sizes = sorted((fingerprint(src)["bytes"], i) for i, src in enumerate(sources))
    total, held = 0, set()
    for size, i in sizes:
        total += size
        if total > HOLD_BELOW_BYTES:
            break
        held.add(i)
    return held


def merged_schema(scanned: list[ScannedSource]) -> pa.Schema:
    """The schema of a whole-row merge, by `datasets`' rules: sources without rows take no part (as in
    `concatenate_datasets`), the others' features must align (an error names the columns that do not)."""
    used = [s for s in scanned if s.rows > 0] or scanned[:1]
    per_source, schemas = [], []
    for s in used:
        # a chunk without rows says nothing about its columns' types (an empty JSON lines range has none)
        chunks = [(storage.url(s.source.fs, c.path), sc) for c, sc in zip(s.source.chunks, s.schemas, strict=True)]
        present = [(w, sc) for (w, sc), n in zip(chunks, _chunk_rows(s), strict=True) if sc is not None and n > 0]
        present = present or [(w, sc) for w, sc in chunks if sc is not None and len(sc)][:1]
        per_source.append((s.name, features.align([(w, features.features_of(sc)) for w, sc in present])))
        schemas += [sc for _, sc in present]
    merged = features.align(per_source)
    try:
        return features.merged_schema(schemas, merged)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise InvalidInput(f"the inputs' columns cannot be merged: {e}") from None


def _chunk_rows(s: ScannedSource) -> list[int]:
    ends = [*s.chunk_starts[1:], s.rows]
    return [b - a for a, b in zip(s.chunk_starts, ends, strict=True)]


def _count_output(report: Report, order: np.ndarray, keep: np.ndarray | None, lengths: list[int]) -> None:
    """Rows out per input, and why the others were dropped: never reached, or duplicates."""
    used = np.bincount(order.astype(np.int64), minlength=len(lengths))
    kept = np.bincount(order[keep].astype(np.int64), minlength=len(lengths)) if keep is not None else used
    for i, r in enumerate(report.inputs):
        r.rows_out = int(kept[i])
        r.drop(DROP_UNUSED, max(0, lengths[i] - int(used[i])))
        r.drop(DROP_DUPLICATE, int(used[i] - kept[i]))
    report.rows_out = int(kept.sum())


def _describe(cfg: Config, targets: list[TargetPlan], schema: pa.Schema) -> dict[str, Any]:
    d: dict[str, Any] = {"format": targets[0].format}
    if cfg.columns == "keep":
        names = schema.names
        d["columns"] = f"keep ({len(names)}): " + ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
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
