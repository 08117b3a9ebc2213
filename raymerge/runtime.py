"""Ray start/attach, sized for a laptop or a cluster, and the one switch between the two.

With no address Ray starts in-process on all local cores; with `address`, `--address` or
`RAY_ADDRESS` it attaches. An already running session (a notebook, the test suite) is reused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
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


@contextlib.contextmanager
def ray_session(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    dashboard: bool = False,
) -> Iterator[None]:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
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
        # Ray announces its default (token auth on a local cluster) as a warning on every start.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(**local_init_kwargs(num_cpus, object_store_memory, dashboard))
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def system_allocator() -> Iterator[None]:
    """Arrow's allocations in this process from the system allocator. A driver allocates Arrow memory for
    metadata, in bursts: the system allocator gives each burst back, the default (mimalloc) keeps its pages
    resident, so the driver's peak grew with the number of metadata rows read."""
    import pyarrow as pa

    before = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(before)


def cluster_cpus() -> int:
    """Cores the running session can use: how many parallel tasks keep it busy."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def node_id() -> str:
    """The Ray node the calling task runs on: tasks can return it so a report says where work ran."""
    import ray

    return ray.get_runtime_context().get_node_id()


_TERMINAL_TASK_STATES = {"FINISHED", "FAILED"}


def task_node_ids(timeout: float = 15.0) -> list[str]:
    """The nodes this job's tasks ran on, from Ray's task events; [] where Ray runs without its dashboard.

    Task events reach the state API a moment after the task ran, so this waits (up to `timeout`)
    until every task of the job it sees has finished. Families need no code for it. Very large jobs
    report the nodes of the most recent tasks the state API keeps (its listing limit).
    """
    import ray
    from ray.util.state import list_tasks
    from ray.util.state.common import RAY_MAX_LIMIT_FROM_API_SERVER
    from ray.util.state.exception import RayStateApiException

    node = ray._private.worker.global_worker.node
    if not getattr(node, "webui_url", None):
        return []
    job_id = ray.get_runtime_context().get_job_id()
    deadline = time.monotonic() + timeout
    seen: dict[str, str] | None = None
    while True:
        try:
            tasks = list_tasks(
                filters=[("job_id", "=", job_id)],
                limit=RAY_MAX_LIMIT_FROM_API_SERVER,
                timeout=30,
                raise_on_missing_output=False,
            )
        except (RayStateApiException, ConnectionError):
            return []
        work = {t.task_id: t for t in tasks if t.type in ("NORMAL_TASK", "ACTOR_TASK", "ACTOR_CREATION_TASK")}
        states = {i: t.state for i, t in work.items()}
        finished = all(t.state in _TERMINAL_TASK_STATES for t in work.values() if t.type != "ACTOR_CREATION_TASK")
        if (finished and states == seen) or time.monotonic() > deadline:
            return sorted({t.node_id for t in work.values() if t.node_id})
        seen = states
        time.sleep(1.0)  # task events are flushed to the state API about once a second
