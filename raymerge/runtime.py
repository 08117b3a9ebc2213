"""Ray start/attach, sized for a laptop or a cluster, and the one switch between the two.

With no address Ray starts in-process on all local cores; with `address`, `--address` or
`RAY_ADDRESS` it attaches. An already running session (a notebook, the test suite) is reused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

# Environment that workers need to reach object storage the way the driver does.
FORWARDED_ENV_PREFIXES = ("AWS_", "S3_", "FSSPEC_", "HF_")


def forwarded_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    provided = job_env_names(env)
    return {k: v for k, v in env.items() if k.startswith(FORWARDED_ENV_PREFIXES) and k not in provided}


def job_env_names(environ: dict[str, str]) -> set[str]:
    """Variables a submitted Ray job already sets on every worker; Ray refuses a driver that sets them again."""
    job_config = json.loads(environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    return set((job_config.get("runtime_env") or {}).get("env_vars") or {})


def local_init_kwargs(num_cpus: int | None, object_store_memory: int | None, dashboard: bool) -> dict[str, Any]:
    """Settings that keep start-up short and memory modest on a small machine."""
    kwargs: dict[str, Any] = {
        "num_cpus": num_cpus or os.cpu_count() or 1,
        "include_dashboard": dashboard,
        "log_to_driver": True,
        "logging_level": logging.WARNING,
        "configure_logging": True,
    }
    if object_store_memory:
        kwargs["object_store_memory"] = object_store_memory
    return kwargs


def _quiet_ray_data(show_progress: bool) -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = show_progress
    ctx.print_on_execution_start = False
    ctx.enable_operator_progress_bars = show_progress
    for name in ("ray.data", "ray.data._internal.execution.streaming_executor"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def ray_session(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    dashboard: bool = False,
    show_progress: bool | None = None,
) -> Iterator[None]:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    if ray.is_initialized():
        _quiet_ray_data(show_progress)
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(
            address=address,
            runtime_env={"env_vars": forwarded_env()},
            logging_level=logging.WARNING,
        )
    else:
        ray.init(**local_init_kwargs(num_cpus, object_store_memory, dashboard))
    try:
        _quiet_ray_data(show_progress)
        yield
    finally:
        ray.shutdown()


def cluster_cpus() -> int:
    """Cores the running session can use: how many parallel tasks keep it busy."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))
