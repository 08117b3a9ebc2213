"""Run a plan: data and video Ray tasks into staging; each output's metadata written as soon as the tasks
it depends on are done (whole-file video copies are placed by the plan, so it does not wait for them)."""

from __future__ import annotations

from typing import Any

from raymerge import storage
from raymerge.lerobot import data, meta, metadata, videos
from raymerge.lerobot.layout import summary
from raymerge.lerobot.metadata import Collected
from raymerge.lerobot.plan import LeRobotPlan, Output
from raymerge.lerobot.scan import batches
from raymerge.report import Progress, Report
from raymerge.runtime import cluster_cpus
from raymerge.storage import Staging


def _root(staging: Staging, out: Output) -> str:
    return storage.join(staging.path, out.name) if out.name else staging.path


def execute(plan: LeRobotPlan, staging: Staging, progress: Progress) -> Report:
    import ray

    cfg = plan.config
    recompute = cfg.recompute_video_stats
    fs_by_position = {s.position: s.fs for s in plan.sources}
    fs_of = ray.put(fs_by_position)
    parallelism = cluster_cpus() * 4
    write_data = ray.remote(data.write_batch)
    write_videos = ray.remote(videos.write_batch)
    pending: dict[Any, tuple[int, str, int, str]] = {}  # output, kind of task, data task number, its stats file
    waiting = [0] * len(plan.outputs)  # tasks whose results each output's metadata needs
    for i, out in enumerate(plan.outputs):
        root = _root(staging, out)
        layout = out.layout
        features = {k: tuple(out.info["features"][k]["shape"]) for k in meta.numeric_keys(out.info["features"])}
        target = ray.put(
            data.Target(
                fs_by_position, layout.task_maps, out.schema, staging.fs, root, features, layout.version == meta.V30
            )
        )
        for n, batch in enumerate(batches(layout.data_jobs, parallelism)):
            stats_path = storage.join(staging.scratch, f"output-{i}", f"episode-stats-{n:06d}.parquet")
            ref = write_data.remote(batch, target, stats_path)
            pending[ref] = (i, "data", n, stats_path)
            waiting[i] += 1
        lengths = layout.length if recompute else None
        # one task per output video, longest first, so that the last ones to finish are short
        for job in sorted(layout.video_jobs, key=lambda j: -sum(r.end_s - r.start_s for r in j.runs)):
            ref = write_videos.remote([job], fs_of, staging.fs, root, lengths, float(out.info["fps"]))
            needed = recompute or not job.is_copy
            pending[ref] = (i, "video" if needed else "copy", 0, "")
            waiting[i] += needed
    collected = [Collected.planned(out.layout) for out in plan.outputs]
    written: dict[int, list[str]] = {}

    def write_ready() -> None:
        for i, out in enumerate(plan.outputs):
            if not waiting[i] and i not in written:
                root = _root(staging, out)
                written[i] = metadata.write(plan.sources, out, collected[i], staging.fs, root, cfg.output, recompute)

    total, done = len(pending), 0
    progress(
        f"writing {sum(len(o.layout.data_jobs) for o in plan.outputs)} data and "
        f"{sum(len(o.layout.video_jobs) for o in plan.outputs)} video file(s) in {total} task(s)"
    )
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            i, kind, n, stats_path = pending.pop(ref)
            results = ray.get(ref)
            if kind == "data":
                collected[i].add_data(n, results, stats_path)
            else:
                collected[i].add_videos(results)
            waiting[i] -= kind != "copy"
            done += 1
            if done == total or done % max(1, total // 10) == 0:
                progress(f"written {done}/{total} tasks")
        write_ready()
    write_ready()
    report = plan.report
    report.files_written = []
    details: dict[str, Any] = {}
    for i, (out, got) in enumerate(zip(plan.outputs, collected, strict=True)):
        prefix = f"{out.name}/" if out.name else ""
        report.files_written.extend(prefix + f for f in sorted(got.files) + written[i])
        details[out.name] = summary(out.layout) | {
            "videos_copied": got.copied,
            "videos_remuxed": len(out.layout.video_jobs) - got.copied,
            "episodes_reencoded": len(got.reencoded),
            "reencoded_episodes": sorted(got.reencoded),
        }
    if len(plan.outputs) == 1 and not plan.outputs[0].name:
        report.details.update(details[""])
    else:
        report.details["splits"] = details
    report.details["episodes_reencoded"] = sum(len(c.reencoded) for c in collected)
    report.status = "ok"
    return report
