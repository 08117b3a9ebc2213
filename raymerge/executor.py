"""The one place that runs work: plain task functions as Ray tasks, or the same functions in this process.

Families describe work as calls (`submit(fn, *args)`) and get back a handle per result, which they
may pass to later calls (Ray resolves a handle given as a top-level argument, as it does an
`ObjectRef`) or fetch with `get`. Nothing else in raymerge creates Ray tasks, actors or objects.

`Executor.ray()` runs on the Ray session that `runtime.ray_session` opened; `Executor.in_process()`
runs each call at once, in the calling process, with no Ray at all: for small plans Ray's start-up
(4-8 s on two cores) costs more than the whole work. Both give the same results, so outputs are
byte-identical whichever runs them.

Storage cost: every call that runs as a Ray task returns, beside its result, what it read, wrote and asked of
object storage in its worker (`raymerge.usage`); the executor strips that from the result and sums it
(`usage()`), as it does for its actors when they are closed. Calls run in this process are counted by the
process itself.

Retries: Ray retries a task whose worker process died (`max_retries`, default 3); an exception raised by a
task fails the run at once, since bad input does not get better by trying again. Cancellation: leaving
`with executor:` on an error kills the executor's actors; its tasks stop with the run's Ray session (see
`cancel`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any

from raymerge import transport, usage
from raymerge.report import Progress, TaskCounter
from raymerge.transport import pack, unpack

MAX_RETRIES = 3
# Below this many input bytes `ray.executor: auto` runs in this process: Ray's start-up (4-8 s on two cores)
# is then more than the work it would spread (a copy-bound merge moves roughly 0.5-1 GB/s per core).
IN_PROCESS_BELOW_BYTES = 1 << 30
MODES = ("auto", "ray", "in-process")
COLLECT_EVERY = 256
USAGE_WAIT_S = 10.0  # for the usage of tasks whose results the run already has
USAGE_RECORD = "raymerge_usage"  # the last record of a streamed call: what it read, wrote and requested


class Local:
    """The result of a call run in this process: its value, or the exception it raised (raised by `get`)."""

    __slots__ = ("error", "value")

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class Executor:
    """Submits calls, tracks them for progress and cancellation, and hands back their results."""

    def __init__(self, mode: str, progress: Progress | None = None) -> None:
        if mode not in ("ray", "in-process"):
            raise ValueError(f"executor mode {mode!r}: expected ray or in-process")
        self.mode = mode
        self.progress = progress or Progress(enabled=False)
        self._remote: dict[tuple[Any, ...], Any] = {}
        self._actors: list[Any] = []
        self._collect_at = COLLECT_EVERY
        self._usage_refs: list[Any] = []
        self._usage: usage.Usage = {}
        self._actor_usage: dict[int, usage.Usage] = {}  # each actor's whole life so far, replaced when asked again

    @classmethod
    def ray(cls, progress: Progress | None = None) -> Executor:
        return cls("ray", progress)

    @classmethod
    def in_process(cls, progress: Progress | None = None) -> Executor:
        return cls("in-process", progress)

    @property
    def is_ray(self) -> bool:
        return self.mode == "ray"

    def cpus(self) -> int:
        """How many calls run at once: the cluster's cores on Ray, one in this process."""
        if not self.is_ray:
            return 1
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def parallelism(self, per_cpu: int = 4) -> int:
        """How many tasks to cut work into: enough to balance uneven pieces over the cores."""
        return self.cpus() * per_cpu

    # -- calls -------------------------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], *args: Any, num_returns: int = 1, num_cpus: float = 1) -> Any:
        """Run `fn(*args)`; one handle, or a list of `num_returns` handles when `fn` returns that many values."""
        if not self.is_ray:
            return self._call(fn, args, num_returns)
        remote = self._remote_fn(fn, num_returns, num_cpus)
        *refs, used = remote.remote(*args)
        self._usage_refs.append(used)
        if len(self._usage_refs) >= self._collect_at:  # now and then, so that usage objects do not pile up
            self._collect_usage()
            self._collect_at = max(COLLECT_EVERY, 2 * len(self._usage_refs))
        return refs if num_returns > 1 else refs[0]

    def _collect_usage(self, timeout: float = 0) -> None:
        """Add the usage of finished tasks to the total and forget their references. A task's usage may reach
        this process a moment after its result did: `timeout` waits that long for all of them."""
        if not self._usage_refs:
            return
        import ray

        done, self._usage_refs = ray.wait(self._usage_refs, num_returns=len(self._usage_refs), timeout=timeout)
        try:
            found = ray.get(done)
        except Exception:  # a failed task has no usage to give; take the others one by one
            found = []
            for ref in done:
                with contextlib.suppress(Exception):
                    found.append(ray.get(ref))
        self._usage = usage.merge(self._usage, *found)

    def _ask_actors(self) -> None:
        import ray

        for i, actor in enumerate(self._actors):
            with contextlib.suppress(Exception):  # a dead actor keeps what it said last
                self._actor_usage[i] = ray.get(actor.raymerge_usage.remote())

    def usage(self) -> usage.Usage:
        """What this executor's Ray tasks (finished ones) and actors have read, written and requested so far.
        Calls run in this process are not in it: the process counts them itself."""
        if self.is_ray:
            self._collect_usage(timeout=USAGE_WAIT_S)
            self._ask_actors()
        return usage.merge(self._usage, *self._actor_usage.values())

    def _call(self, fn: Callable[..., Any], args: Sequence[Any], num_returns: int) -> Any:
        try:
            value = fn(*(a.result() if isinstance(a, Local) else a for a in args))
        except Exception as e:
            return Local(error=e) if num_returns == 1 else [Local(error=e) for _ in range(num_returns)]
        if num_returns == 1:
            return Local(value)
        values = list(value)
        if len(values) != num_returns:
            raise ValueError(f"{fn.__name__} returned {len(values)} values, expected {num_returns}")
        return [Local(v) for v in values]

    def _remote_fn(self, fn: Callable[..., Any], num_returns: int, num_cpus: float) -> Any:
        key = (fn, num_returns, num_cpus)
        if key not in self._remote:
            import ray

            self._remote[key] = ray.remote(_metered(fn, num_returns)).options(
                num_returns=num_returns + 1, num_cpus=num_cpus, max_retries=MAX_RETRIES
            )
        return self._remote[key]

    def put(self, value: Any) -> Any:
        """A handle for a value that many calls share: stored once, not once per call."""
        if not self.is_ray:
            return Local(value)
        import ray

        return ray.put(pack(value))

    def get(self, handles: Any) -> Any:
        """The value of one handle, or the values of a list of handles, in order."""
        if isinstance(handles, list):
            if not self.is_ray:
                return [h.result() for h in handles]
        elif not self.is_ray:
            return handles.result()
        import ray

        found = ray.get(handles)
        return [unpack(v) for v in found] if isinstance(handles, list) else unpack(found)

    def as_completed(
        self, handles: Iterable[Any], label: str = "", sizes: Sequence[int] | None = None
    ) -> Iterator[tuple[int, Any]]:
        """(position, value) of each handle as soon as it is done; with `label`, a progress line now and then."""
        pending = list(handles)
        counter = TaskCounter(self.progress, label, len(pending), int(sum(sizes or ()))) if label else None
        if not self.is_ray:
            for i, h in enumerate(pending):
                value = h.result()
                if counter:
                    counter.advance(sizes[i] if sizes else 0)
                yield i, value
            return
        import ray

        where = {ref: i for i, ref in enumerate(pending)}
        waiting = list(pending)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            for ref in done:
                i = where[ref]
                value = unpack(ray.get(ref))
                if counter:
                    counter.advance(sizes[i] if sizes else 0)
                yield i, value

    def map(
        self,
        fn: Callable[..., Any],
        calls: Iterable[Sequence[Any]],
        *,
        label: str = "",
        ordered: bool = True,
        max_in_flight: int | None = None,
        num_cpus: float = 1,
        num_returns: int = 1,
        submitted: Callable[[int, list[Any]], None] | None = None,
        sizes: Sequence[int] | None = None,
    ) -> Iterator[Any]:
        """`fn(*args)` for every args tuple with at most `max_in_flight` running at once (default: twice the
        cores), so a long list of calls never floods the cluster or the object store, and calls run about
        in the order given (Ray runs what is submitted in no set order). Results in call order (`ordered`),
        or as they complete as (position, value).

        With `num_returns` > 1 the first value is the result; `submitted(i, handles)` sees each call's
        handles as it goes out (to hand the others to an actor). `sizes` weigh the progress lines."""
        calls = list(calls)
        counter = TaskCounter(self.progress, label, len(calls), int(sum(sizes or ()))) if label else None
        if not self.is_ray:
            for i, args in enumerate(calls):
                handles = self._call(fn, args, num_returns)
                handles = handles if num_returns > 1 else [handles]
                if submitted:
                    submitted(i, handles)
                value = handles[0].result()
                if counter:
                    counter.advance(sizes[i] if sizes else 0)
                yield value if ordered else (i, value)
            return
        import ray

        limit = max_in_flight or 2 * self.cpus()
        running: dict[Any, int] = {}
        results: dict[int, Any] = {}
        next_call, next_out = 0, 0
        while next_call < len(calls) or running:
            while next_call < len(calls) and len(running) < limit:
                handles = self.submit(fn, *calls[next_call], num_cpus=num_cpus, num_returns=num_returns)
                handles = handles if num_returns > 1 else [handles]
                if submitted:
                    submitted(next_call, handles)
                running[handles[0]] = next_call
                next_call += 1
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                i = running.pop(ref)
                value = unpack(ray.get(ref))
                if counter:
                    counter.advance(sizes[i] if sizes else 0)
                if not ordered:
                    yield i, value
                else:
                    results[i] = value
            while ordered and next_out in results:
                yield results.pop(next_out)
                next_out += 1

    def stream(
        self,
        fn: Callable[..., Iterator[dict[str, Any]]],
        calls: Sequence[Sequence[Any]],
        datasource: Callable[[Callable[..., Iterator[str]], Sequence[Sequence[Any]]], Any],
        *,
        label: str = "",
    ) -> Iterator[dict[str, Any]]:
        """The records (small dicts of plain values) that `fn(*args)` yields for every args tuple (handles among
        the args are given as their values). On Ray, a Ray Data stage: `datasource(calls_fn, calls)` (a
        Datasource with one read task per call, each block a row of `calls_fn`'s JSON text) is read as a Dataset,
        whose streaming executor bounds the calls in flight and the object store they fill, retries a call whose
        worker died, and shows per-operator progress (also in the dashboard's Data panel); records come in no
        set order. In this process, the calls one by one."""
        if not self.is_ray:
            counter = TaskCounter(self.progress, label, len(calls)) if label else None
            for args in calls:
                yield from fn(*(a.result() if isinstance(a, Local) else a for a in args))
                if counter:
                    counter.advance()
            return
        import ray.data

        context = ray.data.DataContext.get_current()
        shown = context.enable_progress_bars
        context.enable_progress_bars = self.progress.enabled
        try:
            dataset = ray.data.read_datasource(datasource(_metered_records(fn), calls), override_num_blocks=len(calls))
            for row in dataset.iter_rows():
                record = json.loads(row["record"])
                if USAGE_RECORD in record:
                    self._usage = usage.merge(self._usage, record[USAGE_RECORD])
                else:
                    yield record
        finally:
            context.enable_progress_bars = shown

    # -- actors ------------------------------------------------------------------------------------
    def actor(self, cls: type, *args: Any) -> Any:
        """One stateful worker whose method calls run in submission order: `call(actor, "method", *args)`."""
        if not self.is_ray:
            return cls(*args)
        import ray

        handle: Any = ray.remote(num_cpus=0, max_restarts=0)(_metered_class(cls)).remote(*args)
        self._actors.append(handle)
        return handle

    def call(self, actor: Any, method: str, *args: Any) -> Any:
        if not self.is_ray:
            return self._call(getattr(actor, method), args, 1)
        return getattr(actor, method).remote(*args)

    # -- lifetime ----------------------------------------------------------------------------------
    def warm_up(self, imports: Callable[[], None]) -> None:
        """Start workers and their imports now, not waited for: a new Ray job's workers start cold."""
        if self.is_ray:
            for _ in range(self.cpus()):
                self.submit(imports)

    def cancel(self) -> None:
        """The run failed or was cancelled: its actors are killed. Its tasks are not cancelled one by one:
        in Ray 2.60 `ray.cancel` of a task whose completion is on its way aborts the driver ("Tried to complete
        task that was not pending"). A local Ray session ends with the run, which stops them; on a shared
        session they finish, and the next run to the same output removes what they wrote."""
        if not self.is_ray:
            return
        import ray

        for actor in self._actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self._actors.clear()
        self._usage = usage.merge(self._usage, *self._actor_usage.values())
        self._actor_usage.clear()

    def close(self) -> None:
        if self.is_ray:
            import ray

            self._ask_actors()
            for actor in self._actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor)
            self._collect_usage()
            self._usage = usage.merge(self._usage, *self._actor_usage.values())
            self._actor_usage.clear()
        self._actors.clear()

    def __enter__(self) -> Executor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.cancel()
        self.close()


def _metered(fn: Callable[..., Any], num_returns: int) -> Callable[..., Any]:
    """`fn` as a Ray task: its values, then the storage usage of the call (one more return value); frames
    in and out cross as Arrow tables (`transport`), and reach `fn` as frames unless it takes them as sent."""
    arrive = (lambda value: value) if transport.wants_frames_as_sent(fn) else unpack

    @functools.wraps(fn)
    def task(*args: Any) -> Any:
        before = usage.snapshot()
        value = fn(*map(arrive, args))
        used = usage.since(before)
        return (pack(value), used) if num_returns == 1 else (*map(pack, value), used)

    return task


def _metered_records(fn: Callable[..., Iterator[dict[str, Any]]]) -> Callable[..., Iterator[str]]:
    """`fn` as a Ray Data read task's work: its records as JSON text, then the storage usage of the call."""

    @functools.wraps(fn)
    def task(*args: Any) -> Iterator[str]:
        import ray

        before = usage.snapshot()
        for record in fn(*(unpack(ray.get(a)) if isinstance(a, ray.ObjectRef) else a for a in args)):
            yield json.dumps(record)
        yield json.dumps({USAGE_RECORD: usage.since(before)})

    return task


def _metered_class(cls: type) -> type:
    """`cls` as a Ray actor that can tell what its process read, wrote and requested since it started."""

    class Metered(cls):
        def __init__(self, *args: Any) -> None:
            self._raymerge_usage_start = usage.snapshot()
            super().__init__(*args)

        def raymerge_usage(self) -> usage.Usage:
            return usage.since(self._raymerge_usage_start)

    Metered.__name__, Metered.__qualname__, Metered.__doc__ = cls.__name__, cls.__qualname__, cls.__doc__
    return Metered


def choose_mode(mode: str, input_bytes: int | None, address: str | None) -> str:
    """`auto`: Ray when it is already running, when a cluster is named, or when the inputs are large enough
    that spreading them pays for Ray's start-up; otherwise this process. `RAYMERGE_EXECUTOR` (ray or in-process)
    decides for every `auto` run of a process, e.g. to run a test suite under both."""
    if mode == "auto":
        mode = os.environ.get("RAYMERGE_EXECUTOR") or "auto"
        if mode not in MODES:
            raise ValueError(f"RAYMERGE_EXECUTOR={mode!r}: expected one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    import ray

    if ray.is_initialized() or address or os.environ.get("RAY_ADDRESS"):
        return "ray"
    if input_bytes is not None and input_bytes < IN_PROCESS_BELOW_BYTES:
        return "in-process"
    return "ray"
