"""Run a plan: data and video tasks write into staging; each output's metadata is written as soon as the
tasks it depends on are done (whole-file video copies are placed by the plan, so it does not wait for them)."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from raymerge import storage
from raymerge.executor import Executor
from raymerge.lerobot import encode_plan, formats, output_meta, tasks, tasks_edit
from raymerge.lerobot.arrays import even_parts
from raymerge.lerobot.data import DataWriteContext
from raymerge.lerobot.layout import summary
from raymerge.lerobot.plan import LeRobotPlan, Output
from raymerge.lerobot.results import TaskResults
from raymerge.report import Report
from raymerge.storage import Staging


class _Submitted(NamedTuple):
    """What a submitted task is for: its output, its kind (data, video, or a copy the metadata need not wait
    for) and, for data, its number and the scratch file of its episodes' stats."""

    output: int
    kind: str
    number: int = 0
    stats_path: str = ""


def _root(staging: Staging, out: Output) -> str:
    """Where an output dataset goes in staging: the root (merge) or a folder per split."""
    return storage.join(staging.path, out.name) if out.name else staging.path


def _submit(plan: LeRobotPlan, staging: Staging, executor: Executor) -> tuple[list[Any], list[_Submitted]]:
    """Every write task of every output: data files in contiguous batches, then one task per video file,
    longest first (so that the last ones to finish are short)."""
    fs_by_position = {s.position: s.fs for s in plan.sources}
    fs_of = executor.put(fs_by_position)
    sizes = executor.put(plan.file_sizes)
    recompute = plan.config.recompute_cameras
    handles: list[Any] = []
    submitted: list[_Submitted] = []
    for i, out in enumerate(plan.outputs):
        root = _root(staging, out)
        layout = out.layout
        features = out.info["features"]
        shapes = {k: tuple(features[k]["shape"]) for k in formats.numeric_keys(features)}
        context = executor.put(
            DataWriteContext(
                fs_by_position,
                layout.task_maps,
                out.schema,
                staging.fs,
                root,
                shapes,
                layout.version == formats.V30,
                plan.file_sizes,
            )
        )
        for n, jobs in enumerate(even_parts(layout.data_jobs, executor.parallelism())):
            stats_path = storage.join(staging.scratch, f"output-{i}", f"episode-stats-{n:06d}.parquet")
            if out.edit is None:
                handles.append(executor.submit(tasks.write_data_files, jobs, context, stats_path))
            else:
                handles.append(executor.submit(tasks_edit.write_edited_files, jobs, context, stats_path, out.edit))
            submitted.append(_Submitted(i, "data", n, stats_path))
        lengths = layout.length if recompute else None
        fps = float(out.info["fps"])
        encoded = encode_plan.jobs(out.encoding, layout)
        for job in sorted(layout.video_jobs, key=lambda j: -sum(r.end_s - r.start_s for r in j.runs)):
            if out.encoding is not None and job.key in out.encoding.reencoded:
                continue  # encoded below
            handles.append(executor.submit(tasks.write_video_file, job, fs_of, staging.fs, root, lengths, fps, sizes))
            submitted.append(_Submitted(i, "video" if recompute or not job.is_copy else "copy"))
        if out.encoding is not None:
            encode = encode_plan.for_executor(out.encoding.encode, executor.is_ray)
            lengths_of = executor.put(layout.length)
            pieces_root = storage.join(staging.scratch, f"output-{i}", "encoded")
            for encode_job in encoded:
                pieces = encode_plan.pieces(encode_job, layout.length, out.encoding.frames_per_task)
                if len(pieces) == 1:
                    args = (encode, lengths_of, fs_of, staging.fs, root, recompute, sizes)
                    handles.append(executor.submit(tasks.encode_video_file, encode_job, *args))
                else:  # each piece by its own task, then one task joins them
                    done = [
                        executor.submit(
                            tasks.encode_video_file,
                            dataclasses.replace(piece, path=f"{encode_job.path}.{n:04d}.mp4"),
                            *(encode, lengths_of, fs_of, staging.fs, pieces_root, False, sizes),
                        )
                        for n, piece in enumerate(pieces)
                    ]
                    join = (encode.fps, lengths_of, staging.fs, pieces_root, root, recompute)
                    handles.append(executor.submit(tasks.join_encoded_pieces, encode_job, *join, *done))
                submitted.append(_Submitted(i, "video"))
    return handles, submitted


def execute(plan: LeRobotPlan, staging: Staging, executor: Executor) -> Report:
    """Write every output dataset of the plan into staging; the report of what was written."""
    cfg = plan.config
    handles, submitted = _submit(plan, staging, executor)
    waiting = [0] * len(plan.outputs)  # tasks whose results each output's metadata needs
    for task in submitted:
        waiting[task.output] += task.kind != "copy"
    results = [TaskResults.planned(out.layout) for out in plan.outputs]
    for got, out in zip(results, plan.outputs, strict=True):
        got.placements |= encode_plan.unplaced(out.encoding, out.layout.n_episodes)
    written: dict[int, list[str]] = {}

    def write_ready() -> None:
        for i, out in enumerate(plan.outputs):
            if not waiting[i] and i not in written:
                root = _root(staging, out)
                written[i] = output_meta.write(
                    plan.sources, out, results[i], staging.fs, root, cfg.output, cfg.recompute_cameras
                )

    executor.progress(
        f"writing {sum(len(o.layout.data_jobs) for o in plan.outputs)} data and "
        f"{sum(len(o.layout.video_jobs) for o in plan.outputs)} video file(s) in {len(handles)} task(s)"
    )
    for k, value in executor.as_completed(handles, label="written"):
        task = submitted[k]
        if task.kind == "data":
            results[task.output].add_data(task.number, value, task.stats_path)
        else:
            results[task.output].add_video(value)
        waiting[task.output] -= task.kind != "copy"
        write_ready()
    write_ready()
    return _report(plan, results, written)


def _report(plan: LeRobotPlan, results: list[TaskResults], written: dict[int, list[str]]) -> Report:
    """The plan's report completed with the files written and how the videos were made."""
    report = plan.report
    report.files_written = []
    details: dict[str, Any] = {}
    for i, (out, got) in enumerate(zip(plan.outputs, results, strict=True)):
        prefix = f"{out.name}/" if out.name else ""
        report.files_written.extend(prefix + f for f in sorted(got.files) + written[i])
        details[out.name] = (
            summary(out.layout)
            | {
                "videos_copied": got.copied,
                "videos_remuxed": len(out.layout.video_jobs) - got.copied,
                "episodes_reencoded": len(got.reencoded),
                "reencoded_episodes": sorted(got.reencoded),
            }
            | encode_plan.details(out.encoding, out.layout)
        )
    if len(plan.outputs) == 1 and not plan.outputs[0].name:
        report.details.update(details[""])
    else:
        report.details["splits"] = details
    report.details["episodes_reencoded"] = sum(len(c.reencoded) for c in results)
    report.status = "ok"
    return report
