"""Ray start/attach, sized for a laptop or a cluster, and the one switch between the two.

With no address Ray starts in-process on all local cores; with `address`, `--address` or
`RAY_ADDRESS` it attaches (an explicit address wins over the environment). An already running
session (a notebook, the test suite) is reused. Nothing from this machine's environment is sent
to a cluster: its processes use the cluster's own identity.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

# Name parts that mark a variable as a credential: its value must never travel in job metadata.
SECRET_NAME_PARTS = frozenset(
    {"SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL", "CREDENTIALS", "KEY", "APIKEY", "PRIVATE", "AUTH",
     "SESSION", "COOKIE", "SIGNATURE", "CERT", "PASSPHRASE"}
)  # fmt: skip


def looks_secret(name: str) -> bool:
    """True for names like AWS_SECRET_ACCESS_KEY, HF_TOKEN, DB_PASSWORD; not for TOKENIZER or KEYS_PATH.

    Whole `_`-separated words are compared, so a value is judged by what its name says it is.
    """
    return any(part in SECRET_NAME_PARTS for part in name.upper().split("_"))


def choose_address(
    explicit: str | None, environ: Mapping[str, str], env_names: tuple[str, ...] = ("RAY_ADDRESS",)
) -> tuple[str | None, str | None]:
    """The address to use and a warning when the environment names another one: an explicit address wins.

    Ray's own clients let `RAY_ADDRESS` override the address they are given; we do not, and say so
    when the two disagree, so the cluster named on the command line is the one used and printed.
    """
    from_env = [(name, environ[name]) for name in env_names if environ.get(name)]
    if not explicit or explicit == "auto":  # "auto" asks for the environment's cluster
        return (from_env[0][1] if from_env else explicit or None), None
    differing = [f"{name}={value}" for name, value in from_env if value.rstrip("/") != explicit.rstrip("/")]
    warning = f"the address {explicit} differs from {', '.join(differing)}; using {explicit}" if differing else None
    return explicit, warning


def share_threads(environ: MutableMapping[str, str]) -> None:
    """Polars' thread pool sized to the process's share of the cores, where it was told its share.

    Polars sizes its pool by the machine's cores; Ray gives each worker its share in `OMP_NUM_THREADS`
    (one per CPU of the task), which polars does not read. Two workers with two polars threads each on
    two cores contend: a bucket join then spent three times its user time spinning in the kernel, and
    10^6-key joins took 9% longer. A `POLARS_MAX_THREADS` of one's own wins. Must run before polars loads.
    """
    if "OMP_NUM_THREADS" in environ:
        environ.setdefault("POLARS_MAX_THREADS", environ["OMP_NUM_THREADS"])


KEEP_FREED_PAGES = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
POLARS_DECAY = ("dirty_decay_ms:500", "muzzy_decay_ms:1000")  # what polars itself puts in `_RJEM_MALLOC_CONF`


def keep_freed_memory(environ: MutableMapping[str, str]) -> None:
    """In a Ray worker (a process told its share of the cores, as for `share_threads`), polars' allocator
    keeps the pages its tasks free for the worker's next tasks.

    Polars hands freed pages back to the kernel after half a second (`POLARS_DECAY`, its own setting, for
    long-lived processes). A task's key tables take hundreds of megabytes, freed at its end and allocated
    again by the next task a moment later: every page handed back costs a fault and a zeroed page the next
    time. At 10^7 tiny-member keys on 2 cores, in runs taken in turns, the join's system time fell from
    17.5-17.9 to 14.2-16.8 core-s (39.0-41.0 s against 39.9-41.4 s). A worker then holds the most its
    tasks held at once (bounded by their sizes: `ROWS_PER_BUCKET`, one range of the output) until it exits.

    Polars writes its setting into the environment when it loads, so a worker started by a process that
    had loaded polars inherits it: that is not taken for one's own. A decay of one's own wins (polars
    applies `_RJEM_MALLOC_CONF` after its defaults); other options of one's own are kept. Must run before
    polars loads."""
    if "OMP_NUM_THREADS" not in environ:
        return
    own = [o for o in environ.get("_RJEM_MALLOC_CONF", "").split(",") if o and o not in POLARS_DECAY]
    if not any(o.startswith(("dirty_decay_ms:", "muzzy_decay_ms:")) for o in own):
        environ["_RJEM_MALLOC_CONF"] = ",".join([*own, KEEP_FREED_PAGES])


@contextlib.contextmanager
def environ_without(*names: str) -> Iterator[None]:
    """Hide variables from a client that would let them override an address we chose."""
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


@contextlib.contextmanager
def environ_set(**values: str) -> Iterator[None]:
    """Point variables at what we chose for a while, then put them back as they were."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
    address, warning = choose_address(address, os.environ)
    with contextlib.ExitStack() as stack:
        if warning:
            print(f"raymerge: warning: {warning}", file=sys.stderr, flush=True)
            # Parts of Ray's driver start-up read RAY_ADDRESS again: it must name the chosen cluster too.
            stack.enter_context(environ_set(RAY_ADDRESS=address or ""))
        if address:
            # No credentials go with the job: the cluster's processes use the cluster's own identity.
            ray.init(address=address, logging_level=logging.WARNING)
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
