"""The checks that need no Ray, run before Ray starts: every input's metadata read (info.json, episodes,
tasks), the inputs compared (fps, robot type, features, declared codecs), selections and splits resolved,
the files the selected episodes need listed and found, and the data schemas compared.

What it read is kept (`Checked`) for the plan of the same config, so that metadata is read once. Every failure
raises `InvalidInput` naming the input, the episode or file, and both values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raymerge import storage
from raymerge.errors import InvalidInput
from raymerge.lerobot import compat, encode_plan, formats, ranged, selection
from raymerge.lerobot.config import ENCODE_OPERATIONS, Config
from raymerge.lerobot.schema import comparable
from raymerge.lerobot.selection import SelectedEpisodes
from raymerge.lerobot.source_meta import Source, read_source

# Every frame's columns a data file must have.
REQUIRED_COLUMNS = ("episode_index", "index", "task_index", "frame_index", "timestamp")


@dataclass
class Checked:
    """What `check` read and resolved: the plan starts from it instead of reading the metadata again."""

    sources: list[Source]
    groups: dict[str, SelectedEpisodes]  # episodes per output dataset in output order ("" is the merge output)
    left_out: list[int]  # episodes a split puts in no output
    version: str  # of the output
    listings: dict[int, dict[str, int]]  # bytes of every file below each used source, by path
    data_files: list[tuple[int, str]]  # (source position, path) the selected episodes need
    video_files: list[tuple[int, str]]
    schema: pa.Schema  # of the output's data files

    @property
    def selected(self) -> SelectedEpisodes:
        """Every output's episodes, one output after the other."""
        return SelectedEpisodes.concat(list(self.groups.values()))

    @property
    def input_bytes(self) -> int:
        """The bytes of the files the selected episodes need: what sizes the run."""
        return sum(self.listings[pos].get(path, 0) for pos, path in self.data_files + self.video_files)


def check_config(cfg: Config) -> Checked:
    """Read and check everything a run needs before any task runs."""
    sources = load_sources(cfg)
    _check_removed(cfg, sources[0])
    converted = encode_plan.check(cfg, sources[0])  # image columns that become videos
    groups, left_out = choose(cfg, sources)
    selected = SelectedEpisodes.concat(list(groups.values()))
    _check_edits(cfg, sources[0], selected)
    by_pos = {s.position: s for s in sources}
    used = selected.rows_by_source()
    listings = {pos: _listing(by_pos[pos]) for pos in used}
    data_files: list[tuple[int, str]] = []
    video_files: list[tuple[int, str]] = []
    for pos, rows in used.items():
        data, videos = _files_of(by_pos[pos], rows, listings[pos], cfg.removed)
        data_files += [(pos, p) for p in data]
        video_files += [(pos, p) for p in videos]
    schema = _check_schemas(sources, selected, listings)
    schema = pa.schema([f for f in schema if f.name not in cfg.removed | converted], metadata=schema.metadata)
    return Checked(sources, groups, left_out, output_version(cfg, sources), listings, data_files, video_files, schema)


def load_sources(cfg: Config) -> list[Source]:
    """Every input's metadata, each checked against the first: fps, robot type, features, declared codecs."""
    sources = []
    for i, (inp, name) in enumerate(zip(cfg.inputs, cfg.input_names(), strict=True)):
        fs, root = storage.resolve(inp.path, inp.storage_options)
        if not storage.exists(fs, root):
            raise InvalidInput(f"input {name} ({inp.path}): no such folder")
        try:
            sources.append(read_source(i, name, fs, root))
        except InvalidInput as e:
            raise InvalidInput(f"input {name}: {e}") from None
    first = sources[0]
    for other in sources[1:]:
        problems = compat.dataset_mismatches(first.info, other.info)
        if problems:
            raise InvalidInput(
                f"input {other.name} ({other.url}) cannot be merged with {first.name} ({first.url}): "
                + "; ".join(problems)
            )
        codecs = compat.codec_mismatches(first.info, other.info)
        if codecs:
            info = storage.url(other.fs, storage.join(other.root, formats.INFO))
            raise InvalidInput(
                f"input {other.name}: video " + "; ".join(codecs) + f" (declared in {info}) cannot be merged with "
                f"the videos of {first.name} ({first.url})"
            )
    return sources


def output_version(cfg: Config, sources: list[Source]) -> str:
    """The configured output version; `same` keeps the inputs' when they agree, v3.0 otherwise."""
    if cfg.output.format_version != "same":
        return cfg.output.format_version
    versions = {s.version for s in sources}
    return versions.pop() if len(versions) == 1 else formats.V30


def choose(cfg: Config, sources: list[Source]) -> tuple[dict[str, SelectedEpisodes], list[int]]:
    """Episodes per output dataset in output order ("" is the merge output), and episodes left out by a split."""
    if cfg.operation in ("merge", "remove_feature", "modify_tasks", "recompute_stats", *ENCODE_OPERATIONS):
        parts = []
        for inp, src in zip(cfg.inputs, sources, strict=True):
            available = np.unique(src.episodes.index).tolist()
            picked = selection.select(inp.episodes, available, f"input {src.name}: inputs[{src.position}]")
            parts.append(SelectedEpisodes.of(src.position, src.episodes.rows_of(picked)))
        selected = SelectedEpisodes.concat(parts)
        if not len(selected):
            raise InvalidInput("the inputs hold no episodes: nothing to merge")
        return {"": selected}, []
    src = sources[0]
    available = np.unique(src.episodes.index).tolist()
    if cfg.operation == "delete_episodes":
        deleted = set(selection.select(cfg.delete, available, "delete"))
        kept = [e for e in available if e not in deleted]
        if not kept:
            raise InvalidInput(f"delete: deleting all {len(available)} episodes of {src.name} leaves nothing to write")
        return {"": SelectedEpisodes.of(src.position, src.episodes.rows_of(kept))}, []
    assert cfg.split is not None
    if cfg.split.fractions is not None:
        split = selection.split_fractions(available, cfg.split.fractions, cfg.split.seed, "split")
    else:
        assert cfg.split.episodes is not None
        split = selection.split_lists(available, cfg.split.episodes, "split")
    for name in split:
        if not name or "/" in name or name.startswith("."):
            raise InvalidInput(f"split {name!r}: a split name must be a plain folder name")
    groups = {name: SelectedEpisodes.of(src.position, src.episodes.rows_of(eps)) for name, eps in split.items()}
    return groups, selection.unassigned(available, split)


def _listing(src: Source) -> dict[str, int]:
    """Every file below the source's root and its size: one listing instead of a request per file."""
    return {p: int(i.get("size") or 0) for p, i in src.fs.find(src.root, detail=True).items()}


def _missing(src: Source, episode: int, path: str, what: str) -> InvalidInput:
    return InvalidInput(
        f"input {src.name}: episode {episode} needs {what} {storage.url(src.fs, path)}, which is missing"
    )


def _check_removed(cfg: Config, src: Source) -> None:
    """`remove_feature` names features the input has, and none of the columns every frame needs."""
    for key in cfg.remove or []:
        if key in REQUIRED_COLUMNS:
            raise InvalidInput(f"remove: {key!r} is a column every LeRobot frame needs; it cannot be removed")
        if key not in src.features:
            raise InvalidInput(f"remove: input {src.name} has no feature {key!r} (it has {', '.join(src.features)})")


def _check_edits(cfg: Config, src: Source, selected: SelectedEpisodes) -> None:
    """`modify_tasks` and relative-action stats apply to the selected episodes of the one input."""
    from raymerge.lerobot import tasks_edit

    if cfg.tasks is None and cfg.relative_action is None:
        return  # a merge's selection spans its inputs: `src` is only the first of them
    episodes = src.episodes.index[selected.row].tolist()
    if cfg.tasks is not None:
        tasks_edit.check_tasks(cfg.tasks, src, episodes)
    if cfg.relative_action is not None:
        tasks_edit.check_relative(cfg.relative_action, src, episodes)


def _files_of(src: Source, rows: np.ndarray, listing: dict[str, int], removed: set[str]) -> tuple[list[str], list[str]]:
    """The data and video files the rows need (not those of removed cameras), each checked to exist."""
    eps = src.episodes
    found: tuple[list[str], list[str]] = ([], [])
    cameras = [(codes, "video file", 1) for key, codes in eps.video_file.items() if key not in removed]
    columns = [(eps.data_file, "data file", 0), *cameras]
    for codes, what, kind in columns:
        for code in np.unique(codes[rows]).tolist():
            path = eps.files[code]
            if path not in listing:
                raise _missing(src, int(eps.index[rows[codes[rows] == code][0]]), path, what)
            found[kind].append(path)
    return found


def _read_schema(src: Source, path: str, size: int | None) -> pa.Schema:
    """A data file's schema, from its footer (read by range)."""
    try:
        with ranged.open_input(src.fs, path, size) as f:
            return pq.read_schema(f)
    except (pa.ArrowException, OSError) as e:
        raise InvalidInput(f"input {src.name}: {storage.url(src.fs, path)}: corrupt parquet file: {e}") from None


def _check_schemas(sources: list[Source], selected: SelectedEpisodes, listings: dict[int, dict[str, int]]) -> pa.Schema:
    """The first selected data file's schema is the output's (as `schema.data_schema` types it); every input's
    columns must match it, up to what that typing irons out (fixed-size or plain lists, large strings)."""
    positions, first = np.unique(selected.source, return_index=True)
    by_pos = {s.position: s for s in sources}
    first_file = {
        int(pos): by_pos[int(pos)].episodes.data_path(int(selected.row[i]))
        for pos, i in sorted(zip(positions, first, strict=True), key=lambda p: p[1])
    }
    ref_pos = min(first_file)
    ref = _read_schema(by_pos[ref_pos], first_file[ref_pos], listings[ref_pos].get(first_file[ref_pos]))
    for pos, path in first_file.items():
        src = by_pos[pos]
        schema = ref if pos == ref_pos else _read_schema(src, path, listings[pos].get(path))
        ref_types = {f.name: f.type for f in ref}
        types = {f.name: f.type for f in schema}
        for name in ref_types.keys() | types.keys():
            a, b = ref_types.get(name), types.get(name)
            if a is None or b is None or comparable(a) != comparable(b):
                raise InvalidInput(
                    f"input {src.name}: column {name!r} of {storage.url(src.fs, path)} is {types.get(name)}, "
                    f"but {by_pos[ref_pos].name} has {ref_types.get(name)}"
                )
        for col in REQUIRED_COLUMNS:
            if col not in types:
                raise InvalidInput(f"input {src.name}: {storage.url(src.fs, path)} has no {col!r} column")
    return ref
