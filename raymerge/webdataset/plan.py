"""`check` (no Ray) and `plan` (metadata only) of a WebDataset run: everything is checked before a byte is written.

check: the config's cross-key rules and every input's shards, listed. plan: scan tasks (tar headers, or an
input's own index, to key tables cut into hash buckets) -> one task per bucket (duplicate keys, the join)
-> ordered chunks (range sort, input order, or the blend order) -> output shards cut by a chain of tasks.
The driver holds counts, per-shard and per-bucket state and handles, nothing per sample (except a blend's
order); key tables stay with the executor (on Ray, in the object store, spread over the cluster).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.errors import InvalidInput
from raymerge.executor import Executor
from raymerge.plan import Plan
from raymerge.report import InputReport, Report
from raymerge.webdataset import config, inline, layout, sourceindex, tasks
from raymerge.webdataset.config import Config
from raymerge.webdataset.sourceindex import ShardIndex
from raymerge.webdataset.sources import Listing, Shard, list_inputs

MAX_BUCKETS = 4096
BUCKETS_PER_CPU = 2
ROWS_PER_BUCKET = 2_000_000  # key-table rows one bucket task holds, at most about (~0.2-0.4 GB)
MEMBER_BYTES_MIN = 1024  # a member takes at least a header and a data block: tar bytes / this >= members
GZ_RATIO = 4  # assumed expansion of a compressed shard, for the same estimate
SCAN_TASKS_PER_CPU = 8  # enough scan tasks to balance uneven shards over the cores
MAX_SCAN_TASKS = 1024  # beyond this many, scan tasks take more shards each (10^5 shards: ~100 each)
INLINE_TASK_BYTES = inline.TASK_BYTES  # tiny members' payload a scan task carries (0: none; `inline`)


@dataclass
class WebDatasetPlan(Plan[Config]):
    """What `execute` needs: the input shards, the ordered key tables and the output shards cut from them."""

    shards: list[Shard] = field(default_factory=list)
    filesystems: list[AbstractFileSystem] = field(default_factory=list)  # per input
    chunks: list[Any] = field(default_factory=list)  # handles of the ordered key tables
    output_shards: list[layout.OutputShard] = field(default_factory=list)
    renumber_width: int | None = None  # digits of renumbered keys, or None to keep the keys


@dataclass(frozen=True)
class Batch:
    """Consecutive shards of one input scanned by one task, and the handle of their whole key table (or None)."""

    input: int
    samples: int
    whole: Any


def check(cfg: Config) -> int:
    """The config's cross-key rules and every input's shards (listed, present) before Ray starts; returns the
    inputs' total bytes."""
    return _checked_listing(cfg).nbytes


def bucket_count(shards: Sequence[Shard], parallelism: int) -> int:
    """Hash buckets for the key tables, from the data: enough to keep every core busy, and enough that no
    bucket task holds more than about `ROWS_PER_BUCKET` rows. The rows are not known before the scan,
    so they are bounded from the tar bytes (a member takes at least 1 KiB); large members make the
    bound high and the buckets smaller than needed, which costs only some task overhead."""
    rows = sum(s.size * (GZ_RATIO if s.compressed else 1) for s in shards) // MEMBER_BYTES_MIN
    return max(1, min(MAX_BUCKETS, max(min(parallelism, len(shards)), -(-rows // ROWS_PER_BUCKET))))


def _checked_listing(cfg: Config) -> Listing:
    """Check the rules and list the inputs; the listing is kept for `plan` of the same config, so that inputs
    (thousands of shards on object storage) are listed once per run."""
    config.check(cfg)
    listing = list_inputs(cfg.inputs)
    cfg.remember_listing(listing)
    return listing


def plan(cfg: Config, executor: Executor) -> WebDatasetPlan:
    """Scan every input shard's headers, check, join/order the key tables and cut output shards."""
    listing = cfg.remembered_listing() or _checked_listing(cfg)
    names = cfg.input_names()
    shards = listing.shards
    op = cfg.operation
    shuffle = cfg.output.shuffle.seed if cfg.output.shuffle else None
    ordered_by_range = op == "join" or shuffle is not None
    check_dups = op == "join" or cfg.on_duplicate_key != "renumber"
    buckets = bucket_count(shards, executor.parallelism(BUCKETS_PER_CPU))
    if not (check_dups or ordered_by_range):
        buckets = 0  # nothing to check by key: no bucket tasks at all
    options = [
        tasks.ScanOptions(
            key_prefix=f"{names[i]}/" if op != "join" and cfg.on_duplicate_key == "prefix" else "",
            ext_prefix=f"{inp.prefix}." if inp.prefix else "",
            shuffle_seed=shuffle,
            buckets=buckets,
            keep_whole=not ordered_by_range,
            inline_bytes=INLINE_TASK_BYTES,
        )
        for i, inp in enumerate(cfg.inputs)
    ]
    indexed, index_notes = _input_indexes(listing)
    executor.progress(f"scanning the headers of {len(shards) - len(indexed)} shard(s)")
    summaries, scanned, bucket_tables = _scan(executor, listing, options, indexed)
    report = Report(kind=cfg.kind, operation=op, output=cfg.output.path, unit="samples")
    _index_report(listing, names, summaries, index_notes, report)
    per_input = _input_summaries(cfg, names, shards, summaries)
    for i, s in enumerate(per_input):
        report.inputs.append(InputReport(names[i], listing.fingerprints[i]["path"], rows_in=s["samples"]))
    if op == "join":
        _check_member_clashes(names, per_input)
    results: list[tasks.BucketResult] = []
    range_parts: list[list[Any]] = []
    boundaries = None
    if ordered_by_range:
        boundaries = (
            layout.range_boundaries_uniform(max(1, buckets))
            if shuffle is not None
            else layout.range_boundaries_by_shard(_primary_counts(op, shards, summaries), max(1, buckets))
        )
    if buckets:
        executor.progress(f"checking keys{' and joining' if op == 'join' else ''} in {buckets} hash bucket(s)")
        nonmatch = [inp.nonmatch or "error" for inp in cfg.inputs[1:]]
        results, range_parts = _check_buckets(
            executor, op, scanned, len(cfg.inputs), bucket_tables, buckets, nonmatch, check_dups, boundaries
        )
        bucket_tables.clear()  # the bucket tasks hold what they still need: the object store can free the rest
        groups = [f"input {n}" for n in names] if op == "join" else ["inputs " + ", ".join(names)]
        _raise_duplicates(results, groups, shards, names)
    if op == "join":
        _join_report(cfg, names, results, report)
    counts: list[int] | None = None  # samples per ordered chunk, where known before they are packed
    if boundaries is not None:
        chunks = _sort_ranges(executor, range_parts, len(boundaries))
        range_parts.clear()  # likewise, once the sort tasks have them
    elif op == "blend":
        counts, chunks = _blend(executor, cfg, scanned, report)
    else:
        counts, chunks = [b.samples for b in scanned], [b.whole for b in scanned]
    if op in ("concat", "reshard"):
        for r in report.inputs:
            r.rows_out = r.rows_in
    output_shards = _cut_output_shards(executor, cfg, chunks, counts)
    total = sum(s.count for s in output_shards)
    if total == 0:
        raise InvalidInput("no samples would be written (every sample was skipped)")
    report.rows_out = total
    report.details.update(
        {
            "shards": len(output_shards),
            "payload_bytes": int(sum(s.nbytes for s in output_shards)),
            "input_shards": len(shards),
            "first_shard": output_shards[0].name,
            "energon_metadata": "yes" if cfg.output.energon else "no",
        }
    )
    width = max(6, len(str(total - 1))) if op != "join" and cfg.on_duplicate_key == "renumber" else None
    return WebDatasetPlan(cfg, report, listing.fingerprints, shards, listing.filesystems, chunks, output_shards, width)


def _input_indexes(listing: Listing) -> tuple[dict[int, ShardIndex], dict[int, list[str]]]:
    """Shards (by global id) to read from their input's own index (`sourceindex`), and per input the shards
    the driver already found it does not fit."""
    usable: dict[int, ShardIndex] = {}
    problems: dict[int, list[str]] = {}
    for i, ref in enumerate(listing.indexes):
        fs = listing.filesystems[i]
        if ref is None or storage.is_local(fs):
            continue
        found, problems[i] = sourceindex.plan_input(
            fs, ref, [(g, s) for g, s in enumerate(listing.shards) if s.input == i]
        )
        usable.update(found)
    return usable, problems


def _index_report(
    listing: Listing, names: list[str], summaries: list[dict], problems: dict[int, list[str]], report: Report
) -> None:
    """Per input that carries an index: for how many shards it was used, and why not for the others."""
    lines = {}
    for i, said in problems.items():
        notes = [
            s["index"] for s, shard in zip(summaries, listing.shards, strict=True) if shard.input == i and s["index"]
        ]
        used = sum(1 for n in notes if n == "used")
        lines[names[i]] = sourceindex.describe(used, said + [n for n in notes if n != "used"])
    if lines:
        report.details["input_indexes"] = lines


def _scan(
    executor: Executor, listing: Listing, options: list[tasks.ScanOptions], indexed: dict[int, ShardIndex]
) -> tuple[list[dict[str, Any]], list[Batch], list[list[Any]]]:
    """Summaries per shard (fetched), the batches with their whole-table handles, bucket handles per batch.

    Bad input raises here: the first bad shard in input order, whichever scan finished first.
    """
    shards = listing.shards
    most = max(layout.SCAN_BATCH_MAX, -(-len(shards) // MAX_SCAN_TASKS))  # scan tasks x buckets objects stay few
    runs = layout.scan_batches(shards, executor.parallelism(SCAN_TASKS_PER_CPU), most)
    handles = []
    for a, b in runs:
        opts = options[shards[a].input]
        fs = listing.filesystems[shards[a].input]
        where = [indexed.get(g) for g in range(a, b)]
        args = (shards[a:b], fs, a, opts, where) if any(where) else (shards[a:b], fs, a, opts)
        handles.append(executor.submit(tasks.scan_shards, *args, num_returns=2 + opts.buckets))
    firsts = [h[0] for h in handles]
    sizes = [sum(s.size for s in shards[a:b]) for a, b in runs]
    per_run: dict[int, list[dict[str, Any]]] = {}
    try:
        per_run.update(executor.as_completed(firsts, label="scanning headers", sizes=sizes))
    except Exception:
        executor.get(firsts)  # raises the first failure in input order
        raise
    summaries = [s for r in range(len(runs)) for s in per_run[r]]
    found = [
        Batch(shards[a].input, sum(s["samples"] for s in summaries[a:b]), h[1])
        for (a, b), h in zip(runs, handles, strict=True)
    ]
    return summaries, found, [list(h[2:]) for h in handles]


def _check_buckets(
    executor: Executor,
    operation: str,
    scanned: list[Batch],
    n_inputs: int,
    bucket_tables: list[list[Any]],
    buckets: int,
    nonmatch: Sequence[str],
    check_duplicates: bool,
    boundaries: list[int] | None,
) -> tuple[list[tasks.BucketResult], list[list[Any]]]:
    """One task per bucket; their results and, when ordering by ranges, the handles of each bucket's range parts."""
    by_input = [[i for i, s in enumerate(scanned) if s.input == k] for k in range(n_inputs)]
    sizes = [len(ids) for ids in by_input]
    returns = 1 + (len(boundaries) if boundaries is not None else 0)
    outs = [
        executor.submit(
            tasks.check_and_join,
            operation,
            sizes,
            nonmatch,
            check_duplicates,
            boundaries,
            *[bucket_tables[i][b] for ids in by_input for i in ids],
            num_returns=returns,
        )
        for b in range(buckets)
    ]
    if returns == 1:  # a single return is the whole tuple
        return [r[0] for _, r in executor.as_completed(outs, label="checking keys")], []
    results = [r for _, r in executor.as_completed([o[0] for o in outs], label="checking keys")]
    return results, [list(o[1:]) for o in outs]


def _sort_ranges(executor: Executor, range_parts: list[list[Any]], groups: int) -> list[Any]:
    """One sort task per range of the output order: handles of the ordered chunks, not waited for (the
    chunks are packed into shards as each is sorted)."""
    return [executor.submit(tasks.sort_range, *[p[r] for p in range_parts]) for r in range(groups)]


def _blend(executor: Executor, cfg: Config, scanned: list[Batch], report: Report) -> tuple[list[int], list[Any]]:
    """Chunks of the blended order, each gathered by a task from the key tables it overlaps; counts per input."""
    lengths = [r.rows_in for r in report.inputs]
    weights = [inp.weight for inp in cfg.inputs if inp.weight is not None] or None  # all or none (config.check)
    tables: list[list[tuple[int, int, Any]]] = [[] for _ in cfg.inputs]
    starts = [0] * len(cfg.inputs)
    for b in scanned:
        if b.samples:
            tables[b.input].append((starts[b.input], b.samples, b.whole))
            starts[b.input] += b.samples
    inputs, rows = layout.blend_indices(lengths, weights, cfg.seed, cfg.stopping_strategy)
    handles = [
        executor.submit(tasks.gather_blend, c.inputs, c.rows, c.sources, c.first, *c.tables, num_returns=2)
        for c in layout.blend_chunks(inputs, rows, lengths, tables)
    ]
    used = np.bincount(inputs, minlength=len(lengths)).tolist()
    for i, r in enumerate(report.inputs):
        r.rows_out = used[i]
        r.drop("not drawn before the blend stopped", max(0, r.rows_in - used[i]))
    return executor.get([h[0] for h in handles]), [h[1] for h in handles]


def _cut_output_shards(
    executor: Executor, cfg: Config, chunks: list[Any], counts: list[int] | None
) -> list[layout.OutputShard]:
    """Output shards cut by a chain of tasks, one per ordered chunk, each packing on from the state the one
    before left (`layout.pack_chunk`): the driver receives pieces of shards, never per-sample sizes. The
    chain is submitted at once: each link runs as soon as its chunk and the link before are done
    (chunks known to be empty, by `counts`, are left out)."""
    out = cfg.output
    packer = layout.ShardPacker(out.maxcount, out.maxsize, out.pattern)
    state: Any = layout.PackState()
    found = []
    for c, chunk in enumerate(chunks):
        if counts is None or counts[c]:
            pieces, state = executor.submit(tasks.pack_chunk, chunk, state, c, out.maxcount, out.maxsize, num_returns=2)
            found.append(pieces)
    for pieces in executor.get(found):
        packer.add_pieces(pieces)
    return packer.shards


def _input_summaries(cfg: Config, names: list[str], shards: list[Shard], summaries: list[dict]) -> list[dict]:
    """Samples and member extensions (with their join prefix) per input; an input without samples is refused."""
    out = []
    for i, inp in enumerate(cfg.inputs):
        ext: dict[str, int] = {}
        n = 0
        prefix = f"{inp.prefix}." if inp.prefix else ""
        for s, summ in zip(shards, summaries, strict=True):
            if s.input == i:
                n += summ["samples"]
                for e, c in summ["extensions"].items():
                    ext[prefix + e] = ext.get(prefix + e, 0) + c
        if n == 0:
            raise InvalidInput(f"input {names[i]} ({inp.path}): has zero samples")
        out.append({"samples": n, "extensions": ext})
    return out


def _check_member_clashes(names: list[str], per_input: list[dict]) -> None:
    """A joined sample cannot hold one member name twice: two inputs with the same extension are refused."""
    owner: dict[str, int] = {}
    for i, s in enumerate(per_input):
        for ext in s["extensions"]:
            if ext in owner:
                j = owner[ext]
                raise InvalidInput(
                    f"member .{ext} is in both {names[j]} and {names[i]}; a joined sample cannot hold it twice. "
                    f"Set inputs[{i}].prefix (members become KEY.PREFIX.{ext.split('.', 1)[-1]})"
                )
            owner[ext] = i


def _primary_counts(op: str, shards: list[Shard], summaries: list[dict]) -> list[int]:
    """Samples per shard id that the order follows (only the primary's in a join)."""
    return [summ["samples"] if (op != "join" or s.input == 0) else 0 for s, summ in zip(shards, summaries, strict=True)]


def _raise_duplicates(
    results: list[tasks.BucketResult], groups: list[str], shards: list[Shard], input_names: list[str]
) -> None:
    """One error for every duplicated key found in any bucket: how many, and the first few with their shards."""
    for g, label in enumerate(groups):
        total = sum(r.duplicates[g][0] for r in results if r.duplicates)
        if not total:
            continue
        examples = sorted(ex for r in results if r.duplicates for ex in r.duplicates[g][1])[:10]
        shown = "; ".join(
            f"{k!r} in {', '.join(f'{input_names[shards[i].input]}/{shards[i].name}' for i in ids)}"
            for k, ids in examples
        )
        raise InvalidInput(
            f"{label}: {total} sample key(s) occur more than once (keys must be unique across all shards): {shown}"
        )


def _join_report(cfg: Config, names: list[str], results: list[tasks.BucketResult], report: Report) -> None:
    """Counts in and out per input of a join; a secondary with `nonmatch: error` and missing keys is refused."""
    stats = [r.join for r in results if r.join is not None]
    rows_out = sum(s.rows_out for s in stats)
    primary = report.inputs[0]
    primary.rows_out = rows_out
    primary.drop("skipped: key missing from a nonmatch=skip input", primary.rows_in - rows_out)
    for k, inp in enumerate(cfg.inputs[1:]):
        missing = sum(s.missing[k] for s in stats)
        matched = sum(s.matched[k] for s in stats)
        used = sum(s.used[k] for s in stats)
        mode = inp.nonmatch or "error"
        if mode == "error" and missing:
            examples = sorted(ex for s in stats for ex in s.missing_examples[k])[:10]
            raise InvalidInput(
                f"input {names[k + 1]} (nonmatch: error): {missing} primary key(s) have no match, e.g. "
                + ", ".join(repr(key) for _, key in examples)
                + ". Set nonmatch: skip or none to allow this"
            )
        sec = report.inputs[k + 1]
        sec.rows_out = used
        sec.drop("key not in primary", sec.rows_in - matched)
        sec.drop("sample skipped by another input", matched - used)
        if mode == "none" and rows_out > used:
            report.details[f"samples_without_{names[k + 1]}"] = rows_out - used
