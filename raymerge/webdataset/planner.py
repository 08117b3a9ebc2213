"""plan (metadata only, everything checked) and execute (writer tasks into staging) for WebDataset."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl
import ray
from fsspec import AbstractFileSystem

from raymerge import directio, storage
from raymerge.errors import InvalidInput, RunFailed
from raymerge.plan import Plan
from raymerge.report import InputReport, Progress, Report
from raymerge.runtime import cluster_cpus, ray_session
from raymerge.webdataset import energon, layout, pipeline
from raymerge.webdataset.config import Config, check
from raymerge.webdataset.sources import Shard, list_shards
from raymerge.webdataset.writer import RangeReader, output_keys, write_shard

MAX_BUCKETS = 64
SCAN_TASKS_PER_CPU = 8  # enough scan tasks to balance uneven shards over the cores


@dataclass
class WdsPlan(Plan):
    shards: list[Shard] = field(default_factory=list)
    filesystems: list[AbstractFileSystem] = field(default_factory=list)
    chunks: list[Any] = field(default_factory=list)  # object refs of ordered key tables
    output_shards: list[layout.OutputShard] = field(default_factory=list)
    renumber_width: int | None = None


def plan(cfg: Config, progress: Progress) -> WdsPlan:
    """Scan every input shard's headers, check, join/order the key tables and cut output shards."""
    check(cfg)
    names = cfg.input_names()
    shards, filesystems, fingerprints, locations = [], [], [], []
    for i, inp in enumerate(cfg.inputs):
        fs, found = list_shards(i, inp.path, inp.shards, inp.storage_options)
        filesystems.append(fs)
        shards.extend(found)
        fingerprints.append(_fingerprint(fs, inp.path, inp.storage_options, found))
        locations.append(fingerprints[-1]["path"])
    op = cfg.operation
    shuffle = cfg.output.shuffle.seed if cfg.output.shuffle else None
    ordered_by_range = op == "join" or shuffle is not None
    check_dups = op == "join" or cfg.on_duplicate_key != "renumber"
    buckets = min(MAX_BUCKETS, 2 * cluster_cpus(), len(shards)) if (check_dups or ordered_by_range) else 0
    options = [
        pipeline.ScanOptions(
            key_prefix=f"{names[i]}/" if op != "join" and cfg.on_duplicate_key == "prefix" else "",
            ext_prefix=f"{inp.prefix}." if inp.prefix else "",
            shuffle_seed=shuffle,
            buckets=buckets,
            keep_whole=not ordered_by_range,
        )
        for i, inp in enumerate(cfg.inputs)
    ]
    progress(f"scanning the headers of {len(shards)} shard(s)")
    summaries, scanned, bucket_refs = pipeline.scan_all(
        shards, filesystems, options, SCAN_TASKS_PER_CPU * cluster_cpus()
    )
    report = Report(kind=cfg.kind, operation=op, output=cfg.output.path, unit="samples")
    per_input = _input_summaries(cfg, names, shards, summaries)
    for i, s in enumerate(per_input):
        report.inputs.append(InputReport(names[i], locations[i], rows_in=s["samples"]))
    if op == "join":
        _check_member_clashes(cfg, names, per_input)
    results: list[pipeline.BucketResult] = []
    range_refs: list[list[Any]] = []
    boundaries = None
    if ordered_by_range:
        groups = max(1, buckets)
        boundaries = (
            layout.range_boundaries_uniform(groups)
            if shuffle is not None
            else layout.range_boundaries_by_shard(_primary_counts(op, shards, summaries), groups)
        )
    if buckets:
        progress(f"checking keys{' and joining' if op == 'join' else ''} in {buckets} hash bucket(s)")
        results, range_refs = pipeline.run_buckets(
            op,
            scanned,
            len(cfg.inputs),
            bucket_refs,
            buckets,
            [inp.nonmatch or "error" for inp in cfg.inputs[1:]],
            check_dups,
            boundaries,
        )
        groups = (
            [f"input {names[i]}" for i in range(len(cfg.inputs))] if op == "join" else ["inputs " + ", ".join(names)]
        )
        pipeline.raise_duplicates(results, groups, shards, names)
    if op == "join":
        _join_report(cfg, names, results, report)
    if boundaries is not None:
        counts, chunks = pipeline.sort_ranges(range_refs, len(boundaries))
    elif op == "blend":
        counts, chunks = _blend(cfg, scanned, report)
    else:
        counts, chunks = [b.samples for b in scanned], [b.whole for b in scanned]
    if op in ("concat", "reshard"):
        for r in report.inputs:
            r.rows_out = r.rows_in
    total = sum(counts)
    if total == 0:
        raise InvalidInput("no samples would be written (every sample was skipped)")
    packer = layout.ShardPacker(cfg.output.maxcount, cfg.output.maxsize, cfg.output.pattern)
    sizes = {c: pipeline.sizes_task.remote(ref) for c, ref in enumerate(chunks) if counts[c]}
    for c in list(sizes):  # one chunk's sizes on the driver at a time
        packer.add_chunk(c, ray.get(sizes.pop(c)))
    report.rows_out = total
    report.details.update(
        {
            "shards": len(packer.shards),
            "payload_bytes": int(sum(s.nbytes for s in packer.shards)),
            "input_shards": len(shards),
            "first_shard": packer.shards[0].name,
            "energon_metadata": "yes" if cfg.output.energon else "no",
        }
    )
    width = max(6, len(str(total - 1))) if op != "join" and cfg.on_duplicate_key == "renumber" else None
    return WdsPlan(cfg, report, fingerprints, shards, filesystems, chunks, packer.shards, width)


def _fingerprint(fs: AbstractFileSystem, path: str, options: dict, found: list[Shard]) -> dict[str, Any]:
    """The listing fingerprint of a folder or file; for patterns and lists, of the shards themselves."""
    root = storage.resolve(path, options)[1]
    if "{" not in path and storage.exists(fs, root):
        return storage.fingerprint(fs, root)
    return {"path": path, "files": len(found), "bytes": sum(s.size for s in found), "shards": [s.name for s in found]}


def _input_summaries(cfg: Config, names: list[str], shards: list[Shard], summaries: list[dict]) -> list[dict]:
    out = []
    for i in range(len(cfg.inputs)):
        ext: dict[str, int] = {}
        n = 0
        for s, summ in zip(shards, summaries, strict=True):
            if s.input == i:
                n += summ["samples"]
                prefix = f"{cfg.inputs[i].prefix}." if cfg.inputs[i].prefix else ""
                for e, c in summ["extensions"].items():
                    ext[prefix + e] = ext.get(prefix + e, 0) + c
        if n == 0:
            raise InvalidInput(f"input {names[i]} ({cfg.inputs[i].path}): has zero samples")
        out.append({"samples": n, "extensions": ext})
    return out


def _check_member_clashes(cfg: Config, names: list[str], per_input: list[dict]) -> None:
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


def _join_report(cfg: Config, names: list[str], results: list[pipeline.BucketResult], report: Report) -> None:
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


def _blend(cfg: Config, scanned: list[pipeline.Batch], report: Report) -> tuple[list[int], list[Any]]:
    lengths = [r.rows_in for r in report.inputs]
    weights = [inp.weight for inp in cfg.inputs]
    frames: list[list[tuple[int, int, Any]]] = [[] for _ in cfg.inputs]
    starts = [0] * len(cfg.inputs)
    for b in scanned:
        if b.samples:
            frames[b.input].append((starts[b.input], b.samples, b.whole))
            starts[b.input] += b.samples
    w = None if weights[0] is None else [float(x) for x in weights]  # type: ignore[arg-type]
    counts, chunks, used = pipeline.blend_chunks(lengths, w, cfg.seed, cfg.stopping_strategy, frames)
    for i, r in enumerate(report.inputs):
        r.rows_out = int(used[i])
        r.drop("not drawn before the blend stopped", max(0, r.rows_in - int(used[i])))
    return counts, chunks


def write_output_shard(
    spec: layout.OutputShard,
    shards: list[Shard],
    filesystems: list[AbstractFileSystem],
    out_fs: AbstractFileSystem,
    root: str,
    mtime: int,
    renumber_width: int | None,
    *pieces: pl.DataFrame,
) -> tuple[dict[str, Any], tuple[pl.DataFrame, pl.DataFrame]]:
    """One output tar and its .tar.idx; the Energon index rows go back as an object for index.sqlite.
    `pieces` are the rows of `spec.pieces`, in order."""
    rows = pl.concat(pieces)
    keys = output_keys(rows, spec.start, renumber_width)
    path = storage.join(root, spec.name)
    out_fs.makedirs(storage.parent(path), exist_ok=True)
    reader = RangeReader(shards, filesystems)
    try:
        with directio.open_output(out_fs, path) as out:
            offsets, samples, parts = write_shard(rows, reader, out, keys=keys, mtime=mtime)
    except OSError as e:
        raise RunFailed(f"writing {spec.name}: {e}") from e
    finally:
        reader.close()
    with out_fs.open(path + energon.IDX_SUFFIX, "wb") as f:
        f.write(energon.tar_index_bytes(offsets))
    return {"name": spec.name, "samples": rows.height, "bytes": int(offsets[-1])}, (samples, parts)


write_task = ray.remote(write_output_shard).options(num_returns=2)


index_actor = ray.remote(num_cpus=0)(energon.IndexBuilder)


def execute(the_plan: WdsPlan, staging: storage.Staging, progress: Progress) -> Report:
    """One writer task per output shard (range reads from the inputs); `index.sqlite` filled by an actor that
    takes each shard's index rows, in shard order, as soon as that shard is written (from the writer, not via
    the driver), while the other writers run."""
    cfg: Config = the_plan.config  # type: ignore[assignment]
    out = cfg.output
    fs, root = staging.fs, staging.path
    specs = the_plan.output_shards
    progress(f"writing {len(specs)} shard(s) of {the_plan.report.rows_out:,} samples")
    index = index_actor.remote() if out.energon else None
    try:
        pending, added = {}, []
        pieces = pipeline.cut_chunks(the_plan.chunks, [p for spec in specs for p in spec.pieces])
        shards, filesystems = ray.put(the_plan.shards), ray.put(the_plan.filesystems)  # once, not per task
        for spec in specs:
            used = [pieces.pop(p) for p in spec.pieces]
            summary, rows = write_task.remote(
                spec, shards, filesystems, fs, root, out.mtime, the_plan.renumber_width, *used
            )
            pending[summary] = spec.name
            if index is not None:
                added.append(index.add.remote(spec.index, rows))  # actor calls run in submission order
        written: dict[str, dict[str, Any]] = {}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                result = ray.get(ref)
                written[result["name"]] = result
                del pending[ref]
            if len(written) % max(1, len(specs) // 10) == 0 or not pending:
                progress(f"  {len(written)}/{len(specs)} shards written")
        names = [s.name for s in specs]
        files = [f for n in names for f in (n, n + energon.IDX_SUFFIX)]
        if index is not None:
            progress("writing Energon metadata (.nv-meta)")
            counts = {n: written[n]["samples"] for n in names}
            files += energon.write_meta(
                fs, root, counts, layout.split_parts(names, out.split_ratio), out.sample_type, out.field_map
            )
            ray.get(added)  # a failed insert fails the run, never a short index
            files += ray.get(index.finish.remote(fs, root))
    finally:
        if index is not None:
            ray.kill(index)
    report = the_plan.report
    report.status = "ok"
    report.files_written = files
    report.details["tar_bytes"] = sum(w["bytes"] for w in written.values())
    return report


def preview_config(cfg: Config, n: int) -> list[dict[str, Any]]:
    """The first `n` samples the config would write: output key, members and their sizes, source shards."""
    with ray_session(cfg.ray.address, num_cpus=cfg.ray.num_cpus):
        the_plan = plan(cfg, Progress(enabled=False))
        records: list[dict[str, Any]] = []
        for spec in the_plan.output_shards:
            for c, a, b in spec.pieces:
                rows = ray.get(the_plan.chunks[c])[a:b]
                keys = output_keys(
                    rows,
                    spec.start + sum(p[2] - p[1] for p in spec.pieces[: spec.pieces.index((c, a, b))]),
                    the_plan.renumber_width,
                )
                for key, (names, srcs, sizes) in zip(
                    keys, rows.select("names", "srcs", "sizes").iter_rows(), strict=True
                ):
                    records.append(
                        {
                            "key": key,
                            "shard": spec.name,
                            "members": {f"{key}.{e}": z for e, z in sorted(zip(names, sizes, strict=True))},
                            "from": sorted({the_plan.shards[s].name for s in srcs}),
                        }
                    )
                    if len(records) >= n:
                        return records
        return records
