"""The Python API: `run`, `plan`, `inspect`, `preview`. The CLI is a thin shell around these."""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from raymerge import storage
from raymerge.config import BaseConfig, load_config, redact
from raymerge.errors import InvalidInput, RunFailed
from raymerge.families import FAMILIES, family
from raymerge.plan import Plan
from raymerge.report import Progress, Report, Timer
from raymerge.runtime import ray_session, system_allocator, task_node_ids

ConfigSource = str | Path | Mapping[str, Any] | BaseConfig


def _load(config: ConfigSource, overrides: Iterable[str], overwrite: bool | None) -> BaseConfig:
    cfg = config if isinstance(config, BaseConfig) else load_config(config, overrides)
    if overwrite:
        cfg.output.overwrite = True
    return cfg


def _staging(cfg: BaseConfig) -> storage.Staging:
    return storage.Staging(
        cfg.output.path,
        cfg.output.storage_options,
        overwrite=cfg.output.overwrite,
        is_file=cfg.output_is_file(),
        allow_existing=cfg.output_allow_existing(),
    )


@contextlib.contextmanager
def _session(cfg: BaseConfig, address: str | None) -> Iterator[None]:
    with (
        system_allocator(),
        ray_session(
            address or cfg.ray.address,
            num_cpus=cfg.ray.num_cpus,
            object_store_memory=cfg.ray.object_store_memory,
            dashboard=cfg.ray.dashboard,
        ),
    ):
        yield


def plan(
    config: ConfigSource,
    *,
    overrides: Iterable[str] = (),
    overwrite: bool | None = None,
    address: str | None = None,
    progress: Progress | None = None,
) -> Plan:
    """Resolve and check everything a run would do; write nothing."""
    cfg = _load(config, overrides, overwrite)
    progress = progress or Progress(enabled=False)
    _staging(cfg).check()
    timer = Timer()
    t0 = time.perf_counter()
    with _session(cfg, address):
        timer.timings["ray_start"] = time.perf_counter() - t0
        with timer.phase("plan"):
            result = family(cfg.kind).plan(cfg, progress)
    result.report.status = "planned"
    result.report.timings.update(timer.timings)
    return result


def run(
    config: ConfigSource,
    *,
    overrides: Iterable[str] = (),
    overwrite: bool | None = None,
    address: str | None = None,
    progress: Progress | None = None,
) -> Report:
    """Plan, write to staging with Ray tasks, commit atomically; return what happened."""
    started = time.perf_counter()
    cfg = _load(config, overrides, overwrite)
    progress = progress or Progress(enabled=False)
    fam = family(cfg.kind)
    stage = _staging(cfg)
    stage.check()
    timer = Timer()
    t0 = time.perf_counter()
    try:
        with _session(cfg, address):
            timer.timings["ray_start"] = time.perf_counter() - t0
            progress(f"planning {cfg.kind} {cfg.operation} of {len(cfg.inputs)} input(s)")
            with timer.phase("plan"):
                the_plan = fam.plan(cfg, progress)
            stage.open()
            progress(f"writing to staging {storage.url(stage.fs, stage.dir)}")
            with timer.phase("write"):
                try:
                    report = fam.execute(the_plan, stage, progress)
                except OSError as e:  # e.g. the disk filled up; a Ray task's error carries the original as `cause`
                    raise RunFailed(f"writing {stage.target_url}: {getattr(e, 'cause', None) or e}") from e
            report.bytes_written = stage.written_bytes()
            nodes = task_node_ids()
            if nodes:
                report.details.setdefault("node_ids", nodes)
            with timer.phase("commit"):
                report.timings = {**timer.timings, "total": time.perf_counter() - started}
                manifest = None if stage.is_file else _manifest(cfg, the_plan, report, stage.run_id)
                stage.commit(manifest)
            progress(f"committed {report.output}")
    finally:
        # After the session ends: a failed or cancelled run's tasks are gone and cannot re-create staging.
        stage.abort()
    report.timings = {**timer.timings, "total": time.perf_counter() - started}
    return report


def _manifest(cfg: BaseConfig, the_plan: Plan, report: Report, run_id: str) -> dict[str, Any]:
    import pyarrow
    import ray

    from raymerge import __version__

    return {
        "raymerge_version": __version__,
        "run_id": run_id,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": redact(cfg._raw or cfg.model_dump()),
        "inputs": the_plan.input_fingerprints,
        "report": report.to_dict(),
        "versions": {
            "python": platform.python_version(),
            "ray": ray.__version__,
            "pyarrow": pyarrow.__version__,
        },
    }


def detect(path: str, storage_options: dict[str, Any] | None = None) -> tuple[str, Any, str]:
    """Which family a bare path belongs to: (kind, fs, path)."""
    fs, p = storage.resolve(path, storage_options)
    if not storage.exists(fs, p):
        raise InvalidInput(f"{path}: no such file or folder")
    for kind in FAMILIES:
        if family(kind).detect(fs, p):
            return kind, fs, p
    raise InvalidInput(f"{path}: not a dataset raymerge knows (text, WebDataset or LeRobot)")


def inspect(path: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a dataset is: family, format, counts, columns/features."""
    kind, fs, p = detect(path, storage_options)
    return {"kind": kind, **family(kind).inspect(fs, p)}


def preview(
    target: str | Path | BaseConfig,
    n: int = 100,
    *,
    storage_options: dict[str, Any] | None = None,
    overrides: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """The first `n` records of a dataset, or of what a config would write."""
    if isinstance(target, BaseConfig) or str(target).endswith((".yaml", ".yml")):
        cfg = _load(target, overrides, None)
        return family(cfg.kind).preview_config(cfg, n)
    kind, fs, p = detect(str(target), storage_options)
    return family(kind).preview(fs, p, n)
