"""`modify_tasks` and the data-side edits of `recompute_stats`: plain functions on metadata (checked before Ray
starts, applied to the planned layout) and the data task that writes files whose task_index or stats differ
from a plain re-indexed copy.

Tasks follow LeRobot 0.6's `modify_tasks`: with `set`/`episodes` every episode has exactly one task (its named
one, else `set`, else its first task), every frame of it that task's index; with `replace` each task text has
its substrings replaced (`replaced`; a frame keeps its own task). Either way the task table is the distinct texts in
sorted order, as LeRobot writes it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raymerge import storage
from raymerge.errors import InvalidInput
from raymerge.lerobot.config import Config, RelativeAction, TasksEdit
from raymerge.lerobot.data import DataResult, DataWriteContext, build_table
from raymerge.lerobot.layout import DataJob, Layout
from raymerge.lerobot.source_meta import Source
from raymerge.lerobot.stats import images, per_episode, relative


@dataclass
class DataEdit:
    """What the data tasks change beyond re-indexing: each output episode's one task index (`modify_tasks`
    with `set`/`episodes`), the relative-action window and mask (`recompute_stats`), the image features whose
    stats they recompute (`stats: recompute`)."""

    episode_task: np.ndarray | None = None
    chunk_size: int = 0
    relative_mask: np.ndarray | None = None
    image_keys: tuple[str, ...] = ()  # image features whose stats are recomputed from their decoded images


def replaced(text: str, replace: dict[str, str]) -> str:
    """A task text with every occurrence of a `replace` key replaced by its value in one pass over the original
    text (a replacement is not replaced again; where keys overlap, the longest wins), so the result does not
    depend on the order of the keys."""
    keys = sorted(replace, key=len, reverse=True)
    return re.sub("|".join(map(re.escape, keys)), lambda m: replace[m.group(0)], text)


def episode_tasks(edit: TasksEdit, episode: int, tasks: tuple[str, ...]) -> list[str]:
    """The tasks an episode has after the edit, as the run writes them (for `preview`)."""
    if edit.replace:
        return list(dict.fromkeys(replaced(t, edit.replace) for t in tasks))
    named = edit.episodes or {}
    return [named.get(episode, edit.set if edit.set is not None else tasks[0])]


def check_tasks(edit: TasksEdit, src: Source, episodes: list[int]) -> None:
    """The edit applies to the selected `episodes` of `src`: named episodes are selected, replaced texts occur,
    and no episode is left without a task."""
    chosen = set(episodes)
    unknown = sorted(set(edit.episodes or {}) - chosen)
    if unknown:
        raise InvalidInput(
            f"tasks.episodes: input {src.name} has no (selected) episode {unknown[0]} "
            f"(it has episodes {min(chosen)}..{max(chosen)})"
        )
    rows = src.episodes.rows_of(episodes)
    used = sorted({t for c in np.unique(src.episodes.tasks[rows]).tolist() for t in src.episodes.task_sets[c]})
    for old in edit.replace or {}:
        if not any(old in t for t in used):
            raise InvalidInput(f"tasks.replace: {old!r} occurs in no task of input {src.name} (its tasks: {used})")
    for t in used:
        if edit.replace and not replaced(t, edit.replace).strip():
            raise InvalidInput(f"tasks.replace: task {t!r} of input {src.name} would become empty")
    if edit.set is None:
        named = edit.episodes or {}
        for r in rows.tolist():
            ep = int(src.episodes.index[r])
            if ep not in named and not src.episodes.task_sets[src.episodes.tasks[r]] and not edit.replace:
                raise InvalidInput(f"tasks: episode {ep} of input {src.name} has no task; give it one or `set`")


def check_relative(spec: RelativeAction, src: Source, episodes: list[int]) -> None:
    """Relative-action stats need `action` and an `observation.state` at least as wide, and one episode of at
    least `chunk_size` frames."""
    feats = src.features
    if "action" not in feats or "observation.state" not in feats:
        raise InvalidInput(f"relative_action: input {src.name} needs both `action` and `observation.state` features")
    width = int(np.prod(feats["action"]["shape"]))
    if int(np.prod(feats["observation.state"]["shape"])) < width:
        raise InvalidInput(
            f"relative_action: input {src.name}'s observation.state {feats['observation.state']['shape']} is "
            f"narrower than its action {feats['action']['shape']}"
        )
    longest = int(src.episodes.length[src.episodes.rows_of(episodes)].max())
    if longest < spec.chunk_size:
        raise InvalidInput(
            f"relative_action.chunk_size: {spec.chunk_size} frames, but the longest episode of input {src.name} "
            f"has {longest}: no window fits"
        )


def plan_edit(cfg: Config, layout: Layout, src: Source) -> tuple[Layout, DataEdit | None]:
    """The layout with the edited task table, and what the data tasks must change (None: nothing)."""
    edit = DataEdit()
    if cfg.tasks is not None:
        layout, edit.episode_task = _retask(layout, cfg.tasks, src)
    if cfg.relative_action is not None:
        edit.chunk_size = cfg.relative_action.chunk_size
        edit.relative_mask = relative.mask(src.features["action"], cfg.relative_action.exclude_joints)
    if cfg.recompute_cameras:
        edit.image_keys = tuple(
            k for k, f in src.features.items() if f.get("dtype") == "image" and k not in cfg.removed
        )
    changed = edit.episode_task is not None or edit.relative_mask is not None or edit.image_keys
    return layout, (edit if changed else None)


def _retask(layout: Layout, edit: TasksEdit, src: Source) -> tuple[Layout, np.ndarray | None]:
    """The layout's tasks edited; each output episode's task index when every frame of it gets the same one."""
    sets = [layout.task_sets[c] for c in layout.episode_tasks.tolist()]
    if edit.replace:
        replace = edit.replace
        new_sets = [tuple(dict.fromkeys(replaced(t, replace) for t in s)) for s in layout.task_sets]
        tasks = sorted({t for c in np.unique(layout.episode_tasks).tolist() for t in new_sets[c]})
        at = {t: i for i, t in enumerate(tasks)}
        maps = {
            pos: [at[replaced(layout.tasks[m], replace)] if m >= 0 else -1 for m in old]
            for pos, old in layout.task_maps.items()
        }
        return dataclasses.replace(layout, tasks=tasks, task_sets=new_sets, task_maps=maps), None
    named = edit.episodes or {}
    source_episode = src.episodes.index[layout.row].tolist()
    chosen = [
        named.get(e, edit.set if edit.set is not None else s[0]) for e, s in zip(source_episode, sets, strict=True)
    ]
    tasks = sorted(set(chosen))
    at = {t: i for i, t in enumerate(tasks)}
    episode_task = np.array([at[t] for t in chosen], dtype=np.int32)
    layout = dataclasses.replace(layout, tasks=tasks, task_sets=[(t,) for t in tasks], episode_tasks=episode_task)
    return layout, episode_task.astype(np.int64)


def write_edited_files(
    jobs: list[DataJob], context: DataWriteContext, stats_path: str, edit: DataEdit
) -> list[DataResult]:
    """`tasks.write_data_files` with the edit applied: each episode's task_index set before the file is written
    and its stats computed; `action`'s dataset summary replaced by that of its relative windows; image
    features' stats from their decoded images."""
    results, stats = [], []
    for job in jobs:
        table = build_table(job, context.fs_of, context.task_maps, context.schema, context.sizes)
        episodes = table["episode_index"].to_numpy()
        if edit.episode_task is not None:
            i = table.schema.get_field_index("task_index")
            column = pa.array(edit.episode_task[episodes]).cast(table.schema.field(i).type)
            table = table.set_column(i, table.schema.field(i), column)
        path = storage.join(context.root, job.path)
        context.fs.makedirs(storage.parent(path), exist_ok=True)
        with context.fs.open(path, "wb") as f:
            pq.write_table(table, f, compression="snappy")
        episode_stats, summaries = per_episode.data_stats(table, context.features, context.with_quantiles)
        for key in edit.image_keys:
            columns, summaries[key] = images.image_stats(table, key)
            for name in columns.column_names:
                episode_stats = episode_stats.append_column(name, columns[name])
        if edit.relative_mask is not None:
            part = relative.summary(table, edit.chunk_size, edit.relative_mask, context.features["action"])
            summaries.pop("action", None)
            if part is not None:
                summaries["action"] = part
        results.append(DataResult(job.path, table.num_rows, episode_stats.num_rows, summaries))
        if episode_stats.num_rows:
            stats.append(episode_stats)
    if stats:
        per_episode.write_scratch(context.fs, stats_path, stats)
    return results
