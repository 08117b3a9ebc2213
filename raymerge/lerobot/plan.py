"""Everything checked before a byte is written, and the layout a run will write.

Driver work is metadata only: info/episodes/tasks files, directory listings, parquet footers. The
per-file scans (episode rows, task indices, video probes) run as Ray tasks. Every failure raises
`InvalidInput` naming the dataset, the episode or file, and both values.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raymerge import storage
from raymerge.errors import InvalidInput
from raymerge.lerobot import checks, meta, scan, selection
from raymerge.lerobot.config import Config
from raymerge.lerobot.layout import Layout, Sized, plan_layout, summary
from raymerge.lerobot.meta import Source, SourceEpisode
from raymerge.plan import Plan
from raymerge.report import InputReport, Report


@dataclass
class Output:
    """One dataset to write: at the output root (merge) or at `<output>/<name>` (split)."""

    name: str
    layout: Layout
    info: dict[str, Any]
    schema: pa.Schema


@dataclass
class LeRobotPlan(Plan):
    sources: list[Source] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)


def load_sources(cfg: Config) -> list[Source]:
    sources = []
    for i, (inp, name) in enumerate(zip(cfg.inputs, cfg.input_names(), strict=True)):
        fs, root = storage.resolve(inp.path, inp.storage_options)
        if not storage.exists(fs, root):
            raise InvalidInput(f"input {name} ({inp.path}): no such folder")
        try:
            sources.append(meta.read_source(i, name, fs, root))
        except InvalidInput as e:
            raise InvalidInput(f"input {name}: {e}") from None
    first = sources[0]
    for other in sources[1:]:
        problems = checks.dataset_mismatches(first.info, other.info)
        if problems:
            raise InvalidInput(
                f"input {other.name} ({other.url}) cannot be merged with {first.name} ({first.url}): "
                + "; ".join(problems)
            )
    return sources


def output_version(cfg: Config, sources: list[Source]) -> str:
    if cfg.output.format_version != "same":
        return cfg.output.format_version
    versions = {s.version for s in sources}
    return versions.pop() if len(versions) == 1 else meta.V30


def choose(cfg: Config, sources: list[Source]) -> tuple[dict[str, list[SourceEpisode]], list[int]]:
    """Episodes per output dataset in output order ("" is the merge output), and episodes left out by a split."""
    if cfg.operation == "merge":
        chosen: list[SourceEpisode] = []
        for inp, src in zip(cfg.inputs, sources, strict=True):
            by_index = {e.index: e for e in src.episodes}
            picked = selection.select(inp.episodes, sorted(by_index), f"input {src.name}: inputs[{src.position}]")
            chosen.extend(by_index[i] for i in picked)
        if not chosen:
            raise InvalidInput("the inputs hold no episodes: nothing to merge")
        return {"": chosen}, []
    src = sources[0]
    assert cfg.split is not None
    by_index = {e.index: e for e in src.episodes}
    available = sorted(by_index)
    if cfg.split.fractions is not None:
        parts = selection.split_fractions(available, cfg.split.fractions, cfg.split.seed, "split")
    else:
        assert cfg.split.episodes is not None
        parts = selection.split_lists(available, cfg.split.episodes, "split")
    for name in parts:
        if not name or "/" in name or name.startswith("."):
            raise InvalidInput(f"split {name!r}: a split name must be a plain folder name")
    return {name: [by_index[i] for i in eps] for name, eps in parts.items()}, selection.unassigned(available, parts)


def _listing(src: Source) -> dict[str, int]:
    return {p: int(i.get("size") or 0) for p, i in src.fs.find(src.root, detail=True).items()}


def _missing(src: Source, ep: SourceEpisode, path: str, what: str) -> InvalidInput:
    return InvalidInput(
        f"input {src.name}: episode {ep.index} needs {what} {storage.url(src.fs, path)}, which is missing"
    )


def _read_schema(src: Source, path: str) -> pa.Schema:
    try:
        with src.fs.open(path, "rb") as f:
            return pq.read_schema(f)
    except (pa.ArrowException, OSError) as e:
        raise InvalidInput(f"input {src.name}: {storage.url(src.fs, path)}: corrupt parquet file: {e}") from None


def check_and_size(
    sources: list[Source], chosen: list[SourceEpisode], parallelism: int, progress: Any, remux: bool
) -> tuple[dict[tuple[int, int], Sized], pa.Schema, dict[tuple[int, str], Any]]:
    """Verify files, rows, tasks and video streams of the chosen episodes; estimate their output bytes.

    Also returns the probed streams by (source position, path), for planning which cuts re-encode.

    With `remux` (v3.0 output: episodes of different sources share a file) streams must also share codec headers.
    """
    listings = {s.position: _listing(s) for s in sources}
    by_pos = {s.position: s for s in sources}
    data_files: dict[tuple[int, str], None] = {}
    video_files: dict[tuple[int, str], None] = {}
    for ep in chosen:
        src, listing = by_pos[ep.source], listings[ep.source]
        if ep.data_path not in listing:
            raise _missing(src, ep, ep.data_path, "data file")
        data_files[(ep.source, ep.data_path)] = None
        for span in ep.videos.values():
            if span.path not in listing:
                raise _missing(src, ep, span.path, "video file")
            video_files[(ep.source, span.path)] = None

    progress(f"scanning {len(data_files)} data file(s) and probing {len(video_files)} video file(s)")
    data_keys = list(data_files)
    scanned = scan.scan_data([(by_pos[s].fs, p) for s, p in data_keys], parallelism)
    probed = (
        scan.probe_videos([(by_pos[s].fs, p) for s, p in video_files], parallelism) if video_files else (lambda: [])
    )
    rows = dict(zip(data_keys, scanned(), strict=True))
    for ep in chosen:
        src = by_pos[ep.source]
        found = rows[(ep.source, ep.data_path)].get(ep.index)
        n, task_ids = found if found else (0, [])
        if n != ep.length:
            raise InvalidInput(
                f"input {src.name}: episode {ep.index} has {n} rows in {storage.url(src.fs, ep.data_path)} "
                f"but its metadata says length {ep.length}"
            )
        for t in task_ids:
            if t < 0 or t >= len(src.tasks) or src.tasks[t] not in ep.tasks:
                name = repr(src.tasks[t]) if 0 <= t < len(src.tasks) else "not in the tasks file"
                raise InvalidInput(
                    f"input {src.name}: episode {ep.index} has task_index {t} ({name}) in "
                    f"{storage.url(src.fs, ep.data_path)}, not one of its tasks {list(ep.tasks)}"
                )

    schema = _check_schemas(sources, chosen)
    streams = _check_videos(sources, dict(zip(video_files, probed(), strict=True)), remux)

    file_rows = {k: sum(n for n, _ in v.values()) for k, v in rows.items()}
    sized: dict[tuple[int, int], Sized] = {}
    for ep in chosen:
        listing = listings[ep.source]
        data_bytes = listing[ep.data_path] * ep.length / max(file_rows[(ep.source, ep.data_path)], 1)
        videos, video_bytes = {}, {}
        for key, span in ep.videos.items():
            info = streams[(ep.source, span.path)]
            if span.whole_file:
                span = dataclasses.replace(span, end_s=info.duration_s)
            share = (span.end_s - span.start_s) / info.duration_s if info.duration_s > 0 else 1.0
            videos[key] = span
            video_bytes[key] = listing[span.path] * min(max(share, 0.0), 1.0)
        probed = dataclasses.replace(ep, videos=videos) if videos != ep.videos else ep  # one copy per episode
        sized[(ep.source, ep.index)] = Sized(probed, data_bytes, video_bytes)
    return sized, schema, streams


def _check_schemas(sources: list[Source], chosen: list[SourceEpisode]) -> pa.Schema:
    """The first chosen data file's schema is the output's; every input's columns must match it."""
    first_file: dict[int, str] = {}
    for ep in chosen:
        first_file.setdefault(ep.source, ep.data_path)
    by_pos = {s.position: s for s in sources}
    ref_pos = min(first_file)
    ref = _read_schema(by_pos[ref_pos], first_file[ref_pos])
    for pos, path in first_file.items():
        src = by_pos[pos]
        schema = ref if pos == ref_pos else _read_schema(src, path)
        ref_types = {f.name: f.type for f in ref}
        types = {f.name: f.type for f in schema}
        for name in ref_types.keys() | types.keys():
            if ref_types.get(name) != types.get(name):
                raise InvalidInput(
                    f"input {src.name}: column {name!r} of {storage.url(src.fs, path)} is {types.get(name)}, "
                    f"but {by_pos[ref_pos].name} has {ref_types.get(name)}"
                )
        for col in ("episode_index", "index", "task_index", "frame_index", "timestamp"):
            if col not in types:
                raise InvalidInput(f"input {src.name}: {storage.url(src.fs, path)} has no {col!r} column")
    return ref


def _check_videos(sources: list[Source], infos: dict[tuple[int, str], Any], remux: bool) -> dict[tuple[int, str], Any]:
    """Every probed stream (by source position and path) against the first one of its camera."""
    if not infos:
        return {}
    from raymerge.lerobot import video

    by_pos = {s.position: s for s in sources}
    key_of = {}
    for src in sources:
        for ep in src.episodes:
            for key, span in ep.videos.items():
                key_of[(src.position, span.path)] = key
    reference: dict[str, tuple[int, str]] = {}
    for f in infos:
        key = key_of[f]
        ref = reference.setdefault(key, f)
        problems = video.incompatibilities(infos[f], infos[ref], remux=remux)
        if problems:
            a, b = by_pos[ref[0]], by_pos[f[0]]
            raise InvalidInput(
                f"input {b.name}: video {storage.url(b.fs, f[1])} ({key}) is not compatible with "
                f"{storage.url(a.fs, ref[1])} of {a.name}: " + "; ".join(problems)
            )
    return infos


def output_info(sources: list[Source], version: str) -> dict[str, Any]:
    """info.json fields carried from the first input (features with their names and video stream info)."""
    first = sources[0].info
    return {"robot_type": first.get("robot_type"), "fps": first["fps"], "features": first["features"]}


def build(cfg: Config, progress: Any, parallelism: int) -> LeRobotPlan:
    sources = load_sources(cfg)
    groups, left_out = choose(cfg, sources)
    version = output_version(cfg, sources)
    chosen = [ep for eps in groups.values() for ep in eps]
    sized, schema, streams = check_and_size(sources, chosen, parallelism, progress, version == meta.V30)
    video_keys = meta.video_keys(sources[0].features)
    source_tasks = {s.position: s.tasks for s in sources}
    file_episodes = Counter((s.position, span.path) for s in sources for e in s.episodes for span in e.videos.values())
    outputs = []
    for name, eps in groups.items():
        layout = plan_layout(
            [sized[(e.source, e.index)] for e in eps],
            source_tasks,
            version,
            video_keys,
            data_files_size_in_mb=cfg.output.data_files_size_in_mb,
            video_files_size_in_mb=cfg.output.video_files_size_in_mb,
            chunks_size=cfg.output.chunks_size,
            file_episodes=file_episodes,
        )
        outputs.append(Output(name, layout, output_info(sources, version), schema))
    streams |= index_cut_files(sources, outputs, parallelism, progress)
    report = _report(cfg, sources, outputs, left_out, streams)
    fingerprints = [storage.fingerprint(s.fs, s.root) for s in sources]
    return LeRobotPlan(cfg, report, fingerprints, sources, outputs)


def index_cut_files(
    sources: list[Source], outputs: list[Output], parallelism: int, progress: Any
) -> dict[tuple[int, str], Any]:
    """Groups of pictures of the source videos the layouts cut (not copied or remuxed whole), to predict
    which cuts re-encode; this reads those files, so whole-file work never pays for it."""
    cut = {
        (r.source, r.path): None
        for o in outputs
        for job in o.layout.video_jobs
        if not job.is_copy
        for r in job.runs
        if not r.whole_file
    }
    if not cut:
        return {}
    progress(f"indexing the groups of pictures of {len(cut)} video file(s) the layout cuts")
    by_pos = {s.position: s for s in sources}
    found = scan.probe_videos([(by_pos[pos].fs, path) for pos, path in cut], parallelism, index=True)()
    return dict(zip(cut, found, strict=True))


def planned_videos(layout: Layout, streams: dict[tuple[int, str], Any]) -> dict[str, Any]:
    """Which output videos `video.concat` will re-encode part of, and which output episodes that touches."""
    from raymerge.lerobot import video

    files, episodes = 0, set()
    for job in layout.video_jobs:
        if job.is_copy:
            continue
        cut = [
            r
            for r in job.runs
            if (g := streams[(r.source, r.path)].gops) and video.cut_reencodes(g, r.start_s, r.end_s)
        ]
        files += bool(cut)
        episodes.update(e for r in cut for e, _, _ in r.episodes)
    return {"videos_reencoded": files, "episodes_reencoded": len(episodes), "reencoded_episodes": sorted(episodes)}


def _report(
    cfg: Config, sources: list[Source], outputs: list[Output], left_out: list[int], streams: dict[tuple[int, str], Any]
) -> Report:
    fs, root = storage.resolve(cfg.output.path, cfg.output.storage_options)
    inputs = []
    for src in sources:
        used = sum(e.episode.length for o in outputs for e in o.layout.episodes if e.episode.source == src.position)
        rep = InputReport(src.name, src.url, sum(e.length for e in src.episodes), used)
        rep.drop("frames of episodes not selected", rep.rows_in - used)
        inputs.append(rep)
    report = Report("lerobot", cfg.operation, storage.url(fs, root), unit="frames", inputs=inputs)
    report.rows_out = sum(o.layout.frames for o in outputs)
    summaries = {o.name: summary(o.layout) | planned_videos(o.layout, streams) for o in outputs}
    if cfg.operation == "merge":
        report.details.update(summaries[outputs[0].name])
    else:
        report.details["splits"] = summaries
        for name, s in summaries.items():
            report.details[name] = (
                f"{s['episodes']} episodes, {s['frames']} frames, {s['tasks']} tasks; videos: "
                f"{s['videos_copied']} copied, {s['videos_remuxed']} remuxed ({s['videos_reencoded']} partly "
                f"re-encoded: episodes {s['reencoded_episodes']})"
            )
        report.details["episodes_in_no_split"] = left_out
        if left_out:
            report.warnings.append(f"{len(left_out)} episode(s) are in no split: {left_out[:20]}")
    return report
