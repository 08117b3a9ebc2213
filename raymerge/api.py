"""The Python API: `run`, `plan`, `inspect`, `preview`. The CLI is a thin shell around these."""

from __future__ import annotations

import contextlib
import json
import platform
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from raymerge import storage, usage
from raymerge.config import BaseConfig, redact
from raymerge.errors import InvalidInput, RunFailed
from raymerge.executor import Executor, choose_mode
from raymerge.families import FAMILIES, family, load_config
from raymerge.plan import Plan
from raymerge.report import Progress, Report, Timer
from raymerge.runtime import ray_session, system_allocator, task_node_ids

ConfigSource = str | Path | Mapping[str, Any] | BaseConfig


def _load(config: ConfigSource, overrides: Iterable[str], overwrite: bool | None, executor: str | None) -> BaseConfig:
    cfg = config if isinstance(config, BaseConfig) else load_config(config, overrides)
    if overwrite:
        cfg.output.overwrite = True
    if executor:
        cfg.ray.executor = executor  # type: ignore[assignment]  # checked by the CLI's choice
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
def _executor(cfg: BaseConfig, input_bytes: int, address: str | None, progress: Progress) -> Iterator[Executor]:
    """Ray when it pays (`executor.choose_mode`), this process otherwise; the run's one executor."""
    mode = choose_mode(cfg.ray.executor, input_bytes, address or cfg.ray.address)
    with system_allocator():
        if mode == "in-process":
            with Executor.in_process(progress) as ex:
                yield ex
            return
        with (
            ray_session(
                address or cfg.ray.address,
                num_cpus=cfg.ray.num_cpus,
                object_store_memory=cfg.ray.object_store_memory,
                dashboard=cfg.ray.dashboard,
            ),
            Executor.ray(progress) as ex,
        ):
            yield ex


def plan(
    config: ConfigSource,
    *,
    overrides: Iterable[str] = (),
    overwrite: bool | None = None,
    address: str | None = None,
    progress: Progress | None = None,
    executor: str | None = None,
) -> Plan:
    """Resolve and check everything a run would do; write nothing."""
    cfg = _load(config, overrides, overwrite, executor)
    progress = progress or Progress(enabled=False)
    fam = family(cfg.kind)
    timer = Timer()
    driver = usage.snapshot()
    with timer.phase("check"):
        _staging(cfg).check()
        input_bytes = fam.check(cfg)
    t0 = time.perf_counter()
    with _executor(cfg, input_bytes, address, progress) as ex:
        timer.timings["ray_start"] = time.perf_counter() - t0
        with timer.phase("plan"):
            result = fam.plan(cfg, ex)
        result.report.storage = usage.merge(usage.since(driver), ex.usage())
    result.report.status = "planned"
    result.report.timings.update(timer.timings)
    result.report.details.setdefault("executor", ex.mode)
    return result


def run(
    config: ConfigSource,
    *,
    overrides: Iterable[str] = (),
    overwrite: bool | None = None,
    address: str | None = None,
    progress: Progress | None = None,
    executor: str | None = None,
) -> Report:
    """Check (no Ray), plan, write to staging with the executor's tasks, commit atomically; return what happened."""
    started = time.perf_counter()
    cfg = _load(config, overrides, overwrite, executor)
    progress = progress or Progress(enabled=False)
    fam = family(cfg.kind)
    stage = _staging(cfg)
    timer = Timer()
    driver = usage.snapshot()  # what this process reads and asks of storage from here on is the run's
    with timer.phase("check"):
        stage.check()
        input_bytes = fam.check(cfg)
    t0 = time.perf_counter()
    try:
        with _executor(cfg, input_bytes, address, progress) as ex:
            timer.timings["ray_start"] = time.perf_counter() - t0
            progress(f"planning {cfg.kind} {cfg.operation} of {len(cfg.inputs)} input(s) ({ex.mode})")
            with timer.phase("plan"):
                the_plan = fam.plan(cfg, ex)
            stage.open()
            progress(f"writing to staging {_staging_place(stage)}")
            with timer.phase("write"):
                try:
                    report = fam.execute(the_plan, stage, ex)
                except OSError as e:  # e.g. the disk filled up; a Ray task's error carries the original as `cause`
                    raise RunFailed(f"writing {stage.target_url}: {getattr(e, 'cause', None) or e}") from e
            report.bytes_written = stage.written_bytes()
            report.storage = _storage_usage(stage, report, driver, ex)
            report.details.setdefault("executor", ex.mode)
            nodes = task_node_ids() if ex.is_ray else []
            if nodes:
                report.details.setdefault("node_ids", nodes)
            with timer.phase("commit"):
                report.timings = {**timer.timings, "total": time.perf_counter() - started}
                manifest = _manifest(cfg, the_plan, report, stage.run_id)
                sidecar = _drop_sidecar(stage) if stage.is_file else None
                stage.commit(None if stage.is_file else manifest)
                if sidecar:
                    _write_json(stage.fs, sidecar, manifest)
            report.storage = _storage_usage(stage, report, driver, ex)  # now with the commit's own requests
            progress(f"committed {report.output}")
    finally:
        # After the session ends: a failed or cancelled run's tasks are gone and cannot re-create staging.
        stage.abort()
    report.timings = {**timer.timings, "total": time.perf_counter() - started}
    return report


def _staging_place(stage: storage.Staging) -> str:
    if storage.is_local(stage.fs):
        return storage.url(stage.fs, stage.dir)
    return f"{stage.target_url} (multipart uploads, completed at the commit)"


def _storage_usage(stage: storage.Staging, report: Report, driver: usage.Usage, ex: Executor) -> usage.Usage:
    """This process's storage usage since the run started, its Ray tasks', and the local output's size."""
    local = {usage.LOCAL: {"bytes_written": report.bytes_written}} if storage.is_local(stage.fs) else {}
    return usage.merge(usage.since(driver), ex.usage(), local)


def _manifest(cfg: BaseConfig, the_plan: Plan, report: Report, run_id: str) -> dict[str, Any]:
    import pyarrow

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
            "ray": _ray_version(),
            "pyarrow": pyarrow.__version__,
        },
    }


SIDECAR_SUFFIX = ".raymerge.json"


def _drop_sidecar(stage: storage.Staging) -> str:
    """A single-file output's report sits beside it as `<file>.raymerge.json`, so a cluster run leaves its
    report with its data. Like `raymerge.json`, it goes first and comes back last: a report never
    describes a file it did not write."""
    path = stage.target + SIDECAR_SUFFIX
    if storage.exists(stage.fs, path):
        stage.fs.rm(path)
    return path


def _write_json(fs: Any, path: str, data: dict[str, Any]) -> None:
    with fs.open(path, "w") as f:
        json.dump(data, f, indent=2, default=str)


def _ray_version() -> str:
    from importlib.metadata import version

    return version("ray")


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
        cfg = _load(target, overrides, None, None)
        fam = family(cfg.kind)
        with _executor(cfg, fam.check(cfg), None, Progress(enabled=False)) as ex:
            return fam.preview_config(cfg, n, ex)
    kind, fs, p = detect(str(target), storage_options)
    return family(kind).preview(fs, p, n)
