"""Everything checked before a byte is written, and the layout a run will write.

Driver work is metadata only: info/episodes/tasks files, directory listings, parquet footers. The
per-file scans (episode rows, task indices, video probes) run as Ray tasks. Every failure raises
`InvalidInput` naming the dataset, the episode or file, and both values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raymerge import storage
from raymerge.errors import InvalidInput
from raymerge.lerobot import checks, meta, scan, selection
from raymerge.lerobot.config import Config
from raymerge.lerobot.layout import Chosen, Layout, Sizes, plan_layout, summary
from raymerge.lerobot.meta import Source
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


def choose(cfg: Config, sources: list[Source]) -> tuple[dict[str, Chosen], list[int]]:
    """Episodes per output dataset in output order ("" is the merge output), and episodes left out by a split."""
    if cfg.operation == "merge":
        parts = []
        for inp, src in zip(cfg.inputs, sources, strict=True):
            available = np.unique(src.episodes.index).tolist()
            picked = selection.select(inp.episodes, available, f"input {src.name}: inputs[{src.position}]")
            parts.append(Chosen.of(src.position, src.episodes.rows_of(picked)))
        chosen = Chosen.concat(parts)
        if not len(chosen):
            raise InvalidInput("the inputs hold no episodes: nothing to merge")
        return {"": chosen}, []
    src = sources[0]
    assert cfg.split is not None
    available = np.unique(src.episodes.index).tolist()
    if cfg.split.fractions is not None:
        parts = selection.split_fractions(available, cfg.split.fractions, cfg.split.seed, "split")
    else:
        assert cfg.split.episodes is not None
        parts = selection.split_lists(available, cfg.split.episodes, "split")
    for name in parts:
        if not name or "/" in name or name.startswith("."):
            raise InvalidInput(f"split {name!r}: a split name must be a plain folder name")
    groups = {name: Chosen.of(src.position, src.episodes.rows_of(eps)) for name, eps in parts.items()}
    return groups, selection.unassigned(available, parts)


def _listing(src: Source) -> dict[str, int]:
    return {p: int(i.get("size") or 0) for p, i in src.fs.find(src.root, detail=True).items()}


def _missing(src: Source, episode: int, path: str, what: str) -> InvalidInput:
    return InvalidInput(
        f"input {src.name}: episode {episode} needs {what} {storage.url(src.fs, path)}, which is missing"
    )


def _read_schema(src: Source, path: str) -> pa.Schema:
    try:
        with src.fs.open(path, "rb") as f:
            return pq.read_schema(f)
    except (pa.ArrowException, OSError) as e:
        raise InvalidInput(f"input {src.name}: {storage.url(src.fs, path)}: corrupt parquet file: {e}") from None


def _used_rows(chosen: Chosen) -> dict[int, np.ndarray]:
    """The rows of each source some output uses, sorted."""
    return {pos: np.unique(chosen.row[chosen.source == pos]) for pos in np.unique(chosen.source).tolist()}


def _files_of(src: Source, rows: np.ndarray, listing: dict[str, int]) -> tuple[list[str], list[str]]:
    """The data and video files the rows need, each checked to exist."""
    eps = src.episodes
    found: tuple[list[str], list[str]] = ([], [])
    columns = [(eps.data_file, "data file", 0)] + [(codes, "video file", 1) for codes in eps.video_file.values()]
    for codes, what, kind in columns:
        for code in np.unique(codes[rows]).tolist():
            path = eps.files[code]
            if path not in listing:
                raise _missing(src, int(eps.index[rows[codes[rows] == code][0]]), path, what)
            found[kind].append(path)
    return found


def _allowed_tasks(src: Source) -> np.ndarray:
    """`set * len(tasks) + task_index` for every task index whose task is in an episode task set."""
    ids: dict[str, list[int]] = {}
    for t, task in enumerate(src.tasks):
        ids.setdefault(task, []).append(t)
    n = len(src.tasks)
    return np.array(
        sorted(
            c * n + t
            for c, names in enumerate(src.episodes.task_sets)
            for name in set(names)
            for t in ids.get(name, [])
        ),
        dtype=np.int64,
    )


def _check_rows(src: Source, rows: np.ndarray, path: str, found: scan.EpisodeRows) -> None:
    """The rows' episodes have as many rows in their data file as their length, and only their own tasks."""
    eps = src.episodes
    where = storage.url(src.fs, path)
    n = found.rows_of(eps.index[rows])
    bad = np.flatnonzero(n != eps.length[rows])
    if len(bad):
        r = int(rows[bad[0]])
        raise InvalidInput(
            f"input {src.name}: episode {eps.index[r]} has {n[bad[0]]} rows in {where} "
            f"but its metadata says length {eps.length[r]}"
        )
    mine = np.isin(found.pair_episodes, eps.index[rows])
    pair_rows = rows[np.searchsorted(eps.index[rows], found.pair_episodes[mine])]
    tasks = found.pair_tasks[mine]
    n_tasks = len(src.tasks)
    ok = (tasks >= 0) & (tasks < n_tasks)
    ok[ok] = np.isin(eps.tasks[pair_rows[ok]].astype(np.int64) * n_tasks + tasks[ok], _allowed_tasks(src))
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        r, t = int(pair_rows[i]), int(tasks[i])
        name = repr(src.tasks[t]) if 0 <= t < n_tasks else "not in the tasks file"
        raise InvalidInput(
            f"input {src.name}: episode {eps.index[r]} has task_index {t} ({name}) in {where}, "
            f"not one of its tasks {list(eps.task_sets[eps.tasks[r]])}"
        )


def check_and_size(
    sources: list[Source], chosen: Chosen, parallelism: int, progress: Any, remux: bool
) -> tuple[dict[int, Sizes], pa.Schema, dict[tuple[int, str], Any]]:
    """Verify files, rows, tasks and video streams of the chosen episodes; estimate their output bytes.

    Also returns the probed streams by (source position, path), for planning which cuts re-encode. The
    probed duration of a v2.1 episode's own video is its end.

    With `remux` (v3.0 output: episodes of different sources share a file) streams must also share codec headers.
    """
    by_pos = {s.position: s for s in sources}
    used = _used_rows(chosen)
    listings = {pos: _listing(by_pos[pos]) for pos in used}
    data_files: list[tuple[int, str]] = []
    video_files: list[tuple[int, str]] = []
    for pos, rows in used.items():
        data, videos = _files_of(by_pos[pos], rows, listings[pos])
        data_files += [(pos, p) for p in data]
        video_files += [(pos, p) for p in videos]

    progress(f"scanning {len(data_files)} data file(s) and probing {len(video_files)} video file(s)")
    scanned = scan.scan_data([(by_pos[s].fs, p) for s, p in data_files], parallelism)
    probed = (
        scan.probe_videos([(by_pos[s].fs, p) for s, p in video_files], parallelism) if video_files else (lambda: [])
    )
    found = dict(zip(data_files, scanned(), strict=True))
    for pos, rows in used.items():
        eps = by_pos[pos].episodes
        for code in np.unique(eps.data_file[rows]).tolist():
            path = eps.files[code]
            _check_rows(by_pos[pos], rows[eps.data_file[rows] == code], path, found[(pos, path)])

    schema = _check_schemas(sources, chosen)
    streams = _check_videos(sources, dict(zip(video_files, probed(), strict=True)), remux)
    sizes = {pos: _sizes(by_pos[pos], rows, listings[pos], found, streams) for pos, rows in used.items()}
    return sizes, schema, streams


def _sizes(
    src: Source,
    rows: np.ndarray,
    listing: dict[str, int],
    found: dict[tuple[int, str], scan.EpisodeRows],
    streams: dict[tuple[int, str], Any],
) -> Sizes:
    """Each used episode's share of its data file's bytes (by rows) and of its video files' (by duration)."""
    eps = src.episodes
    size = np.array([listing.get(p, 0) for p in eps.files], dtype=np.float64)
    file_rows = np.array([int(found[k].rows.sum()) if (k := (src.position, p)) in found else 0 for p in eps.files])
    data = np.zeros(len(eps))
    codes = eps.data_file[rows]
    data[rows] = size[codes] * eps.length[rows] / np.maximum(file_rows[codes], 1)
    video = {}
    for key, all_codes in eps.video_file.items():
        duration = np.array([s.duration_s if (s := streams.get((src.position, p))) else 0.0 for p in eps.files])
        codes = all_codes[rows]
        if eps.whole_files:
            eps.end_s[key][rows] = duration[codes]
        d = duration[codes]
        share = np.where(d > 0, (eps.end_s[key][rows] - eps.start_s[key][rows]) / np.where(d > 0, d, 1.0), 1.0)
        video[key] = np.zeros(len(eps))
        video[key][rows] = size[codes] * np.clip(share, 0.0, 1.0)
    return Sizes(data, video)


def _check_schemas(sources: list[Source], chosen: Chosen) -> pa.Schema:
    """The first chosen data file's schema is the output's; every input's columns must match it."""
    positions, first = np.unique(chosen.source, return_index=True)
    by_pos = {s.position: s for s in sources}
    first_file = {
        int(pos): by_pos[int(pos)].episodes.data_path(int(chosen.row[i]))
        for pos, i in sorted(zip(positions, first, strict=True), key=lambda p: p[1])
    }
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
        for key, codes in src.episodes.video_file.items():
            for code in np.unique(codes).tolist():
                key_of[(src.position, src.episodes.files[code])] = key
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
    chosen = Chosen.concat(list(groups.values()))
    sizes, schema, streams = check_and_size(sources, chosen, parallelism, progress, version == meta.V30)
    video_keys = meta.video_keys(sources[0].features)
    source_tasks = {s.position: s.tasks for s in sources}
    episodes = {s.position: s.episodes for s in sources}
    outputs = []
    for name, mine in groups.items():
        layout = plan_layout(
            mine,
            episodes,
            sizes,
            source_tasks,
            version,
            video_keys,
            data_files_size_in_mb=cfg.output.data_files_size_in_mb,
            video_files_size_in_mb=cfg.output.video_files_size_in_mb,
            chunks_size=cfg.output.chunks_size,
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
        episodes.update(e for r in cut for e in r.episodes)
    return {"videos_reencoded": files, "episodes_reencoded": len(episodes), "reencoded_episodes": sorted(episodes)}


def _report(
    cfg: Config, sources: list[Source], outputs: list[Output], left_out: list[int], streams: dict[tuple[int, str], Any]
) -> Report:
    fs, root = storage.resolve(cfg.output.path, cfg.output.storage_options)
    inputs = []
    for src in sources:
        used = sum(int(o.layout.length[o.layout.source == src.position].sum()) for o in outputs)
        rep = InputReport(src.name, src.url, int(src.episodes.length.sum()), used)
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
