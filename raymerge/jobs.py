"""`raymerge job` and the following half of `raymerge submit`: a job's status, logs, stop and list.

The exit code is always the job's own: a dropped log stream is re-attached until the job ends, and
only a job server unreachable for the whole reconnect timeout gives up (exit code 3). Nothing here
reads a config: following a job needs only its id and the cluster's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from raymerge.errors import InvalidInput, RunFailed
from raymerge.runtime import choose_address, environ_without

TOKEN_PATH = Path.home() / ".ray" / "auth_token"
# Where `submit` finds the job server: --address, else these, in Ray's own order.
ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")

# How a failed job's driver exit code maps to ours: the run's own codes pass through.
_KNOWN_EXIT_CODES = {1, 2, 130}
EXIT_UNKNOWN = 3  # the job server stayed unreachable: the job's outcome is not known


# -- talking to the job server --------------------------------------------------------------------


def auth_token(environ: Mapping[str, str], default_path: Path = TOKEN_PATH) -> str | None:
    """The cluster token the way Ray's own clients find it: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token.

    The default file is only used when RAY_AUTH_MODE=token, so a local token is not sent to a
    cluster that never asked for one.
    """
    if environ.get("RAY_AUTH_TOKEN"):
        return environ["RAY_AUTH_TOKEN"].strip()
    path = environ.get("RAY_AUTH_TOKEN_PATH")
    if not path and environ.get("RAY_AUTH_MODE", "").lower() == "token":
        path = str(default_path)
    if not path:
        return None
    try:
        return Path(path).expanduser().read_text().strip() or None
    except OSError as e:
        raise RunFailed(f"cannot read the Ray auth token file {path}: {e.strerror}") from None


def auth_headers(environ: Mapping[str, str]) -> dict[str, str]:
    token = auth_token(environ)
    return {"Authorization": f"Bearer {token}"} if token else {}


def job_server(address: str | None, environ: Mapping[str, str], err: TextIO) -> str:
    """The job server to talk to: --address, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS; a warning on a clash."""
    chosen, warning = choose_address(address, environ, ADDRESS_ENV)
    if warning:
        print(f"raymerge: warning: {warning}", file=err, flush=True)
    if not chosen:
        raise InvalidInput(
            "no cluster named: pass --address http://HEAD:8265 (the job server, i.e. the dashboard) "
            "or set RAY_API_SERVER_ADDRESS"
        )
    return chosen


def connect(address: str | None, environ: Mapping[str, str], err: TextIO) -> tuple[Any, str]:
    """A job-submission client of the chosen cluster, whatever RAY_ADDRESS says (Ray's client would let it win)."""
    from ray.job_submission import JobSubmissionClient

    chosen = job_server(address, environ, err)
    headers = auth_headers(environ)
    with environ_without(*ADDRESS_ENV):
        return call(chosen, lambda: JobSubmissionClient(chosen, headers=headers)), chosen


def call(address: str, fn: Callable[[], Any]) -> Any:
    """One clear message for the ways talking to a job server fails (unreachable, token refused, unknown job)."""
    from ray.exceptions import AuthenticationError
    from requests.exceptions import RequestException

    try:
        return fn()
    except AuthenticationError:
        raise RunFailed(
            f"the Ray cluster at {address} refused the request: it uses token authentication "
            "(RAY_AUTH_MODE=token); set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH to the cluster's token"
        ) from None
    except (ConnectionError, RequestException) as e:
        raise RunFailed(f"cannot reach the Ray job server at {address}: {e}") from None
    except RuntimeError as e:
        if "does not exist" in str(e) or "status code 404" in str(e):
            raise InvalidInput(f"the Ray cluster at {address} has no such job: {e}") from None
        raise


def exit_code(status: str, driver_exit_code: int | None) -> int:
    """The job's outcome as our exit codes: 0 ok, 2 rejected input, 1 failure, 130 stopped."""
    if status == "SUCCEEDED":
        return 0
    if status == "STOPPED":
        return 130
    return driver_exit_code if driver_exit_code in _KNOWN_EXIT_CODES else 1


# -- following a job -------------------------------------------------------------------------------


class _Cursor:
    """How much of the job's log is on screen, so a re-attached stream does not repeat it."""

    def __init__(self, job_id: str, out: TextIO, err: TextIO) -> None:
        self.job_id, self.out, self.err = job_id, out, err
        self.printed = 0  # characters of the log on screen
        self.seen = 0  # characters the current stream has delivered
        self.any_chunk = False
        self.attached = True

    def write(self, text: str) -> None:
        """Print the part of `text` (the log from offset `seen`) not printed yet."""
        if not self.attached:
            print(f"raymerge: re-attached to job {self.job_id}", file=self.err, flush=True)
            self.attached = True
        new = text[self.printed - self.seen :] if self.seen < self.printed else text
        self.seen += len(text)
        if new:
            self.out.write(new)
            self.out.flush()
            self.printed += len(new)
            self.any_chunk = True

    def restart(self) -> None:
        self.seen = 0

    def lost(self, problem: BaseException | None, stop_on_interrupt: bool) -> None:
        """Say once per outage that the stream dropped and the job runs on."""
        if not self.attached:
            return
        self.attached = False
        why = f" ({_reason(problem)})" if problem is not None else ""
        action = "Ctrl-C stops it" if stop_on_interrupt else "Ctrl-C stops following"
        print(
            f"raymerge: lost the log stream of job {self.job_id}{why}; the job runs on in the cluster; "
            f"re-attaching ({action})",
            file=self.err,
            flush=True,
        )


async def _tail(client: Any, job_id: str, cursor: _Cursor, check_every: float) -> None:
    """Stream the log until it ends or the job is over; a silent, dead connection cannot hang it."""
    cursor.restart()

    async def stream() -> None:
        async for chunk in client.tail_job_logs(job_id):
            cursor.write(chunk)

    task = asyncio.ensure_future(stream())
    while True:
        done, _ = await asyncio.wait({task}, timeout=check_every)
        if done:
            return task.result()
        try:
            status = await asyncio.wait_for(asyncio.to_thread(client.get_job_status, job_id), timeout=check_every)
        except Exception:  # the next status check decides; the stream may still be alive
            continue
        if status.is_terminal():
            done, _ = await asyncio.wait({task}, timeout=check_every)  # let the stream deliver its end
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            return None


def _job_info(client: Any, job_id: str) -> Any | None:
    """The job's details, or None while the job server cannot be reached."""
    from ray.exceptions import AuthenticationError

    try:
        return client.get_job_info(job_id)
    except AuthenticationError:
        raise
    except Exception:
        return None


def _print_rest(client: Any, job_id: str, cursor: _Cursor) -> None:
    """The end of the log the stream did not deliver (it dropped, or the job ended meanwhile)."""
    with contextlib.suppress(Exception):
        logs = client.get_job_logs(job_id)
        cursor.restart()
        cursor.attached = True
        cursor.write(logs)


def follow(
    client: Any,
    job_id: str,
    address: str,
    out: TextIO,
    err: TextIO,
    *,
    reconnect_timeout: float = 600.0,
    stop_on_interrupt: bool = False,
    check_every: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Stream the job's log until it ends and return its exit code; re-attach whenever the stream drops.

    Ctrl-C stops the job when `stop_on_interrupt` (submit), else only stops following (job logs).
    """
    cursor = _Cursor(job_id, out, err)
    lost_since: float | None = None
    delay = 1.0
    try:
        while True:
            problem = None
            try:
                asyncio.run(_tail(client, job_id, cursor, check_every))
            except Exception as e:
                problem = e
            info = _job_info(client, job_id)
            if info is not None and info.status.is_terminal():
                _print_rest(client, job_id, cursor)
                return _report_end(job_id, info, cursor, err)
            if info is not None and problem is None:
                lost_since, delay = None, 1.0
                sleep(1.0)  # the stream ended cleanly while the job runs on: attach again
                continue
            cursor.lost(problem, stop_on_interrupt)
            now = time.monotonic()
            lost_since = (lost_since or now) if info is None else None  # only an unreachable server times out
            if lost_since is not None and now - lost_since > reconnect_timeout:
                print(
                    f"raymerge: cannot reach the job server at {address} for {reconnect_timeout:.0f}s; job {job_id} "
                    f"may still be running: `raymerge job status {job_id} --address {address}`, or re-attach with "
                    f"`raymerge job logs {job_id} --follow --address {address}`",
                    file=err,
                    flush=True,
                )
                return EXIT_UNKNOWN
            sleep(delay)
            delay = min(delay * 2, 15.0)
    except KeyboardInterrupt:
        if not stop_on_interrupt:
            print(f"raymerge: stopped following job {job_id}; it runs on in the cluster", file=err, flush=True)
            return 130
        try:
            client.stop_job(job_id)
            print(f"raymerge: cancelled; stopped job {job_id}", file=err, flush=True)
        except Exception as e:
            print(f"raymerge: cancelled, but could not stop job {job_id}: {_reason(e)}", file=err, flush=True)
        return 130


def _reason(exc: BaseException | None) -> str:
    text = str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _report_end(job_id: str, info: Any, cursor: _Cursor, err: TextIO) -> int:
    status = str(info.status)
    code = exit_code(status, info.driver_exit_code)
    if code:
        message = (info.message or "").strip()
        if cursor.any_chunk:  # the log is on screen already; Ray's message would repeat its end
            message = message.splitlines()[0] if message else ""
        detail = f": {message}" if message and status != "STOPPED" else ""
        print(f"raymerge: job {job_id} {status.lower()} (exit code {code}){detail}", file=err, flush=True)
    return code


# -- `raymerge job` --------------------------------------------------------------------------------


def _details(info: Any) -> dict[str, Any]:
    data = info.model_dump() if hasattr(info, "model_dump") else info.dict()
    data["status"] = str(info.status)
    return data


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) if ms else "-"


def job_status(job_id: str, address: str | None, *, as_json: bool, out: TextIO, err: TextIO) -> int:
    import os

    client, address = connect(address, os.environ, err)
    info = call(address, lambda: client.get_job_info(job_id))
    if as_json:
        print(json.dumps(_details(info), indent=2, default=str), file=out)
        return 0
    code = exit_code(str(info.status), info.driver_exit_code)
    ended = f", ended {_when(info.end_time)} UTC, exit code {code}" if info.status.is_terminal() else ""
    print(f"{job_id}: {info.status} (started {_when(info.start_time)} UTC{ended})", file=out)
    if info.message:
        print(f"  {info.message.strip().splitlines()[0]}", file=out)
    return 0


def job_logs(
    job_id: str, address: str | None, *, follow_logs: bool, reconnect_timeout: float, out: TextIO, err: TextIO
) -> int:
    """The job's log so far; with `follow_logs`, until it ends, exiting with the job's own exit code."""
    import os

    client, address = connect(address, os.environ, err)
    if not follow_logs:
        out.write(call(address, lambda: client.get_job_logs(job_id)))
        out.flush()
        return 0
    call(address, lambda: client.get_job_status(job_id))  # an unknown job is an error, not a wait
    return follow(client, job_id, address, out, err, reconnect_timeout=reconnect_timeout)


def job_stop(job_id: str, address: str | None, *, wait_s: float, out: TextIO, err: TextIO) -> int:
    import os

    client, address = connect(address, os.environ, err)
    call(address, lambda: client.stop_job(job_id))
    deadline = time.monotonic() + wait_s
    status = call(address, lambda: client.get_job_status(job_id))
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
        status = call(address, lambda: client.get_job_status(job_id))
    print(f"{job_id}: {status}", file=out)
    return 0 if status.is_terminal() else 1


def job_list(address: str | None, *, every: bool, as_json: bool, out: TextIO, err: TextIO) -> int:
    """The cluster's raymerge jobs (every job with `every`), oldest first."""
    import os

    client, address = connect(address, os.environ, err)
    jobs = [j for j in call(address, client.list_jobs) if every or (j.submission_id or "").startswith("raymerge-")]
    jobs.sort(key=lambda j: j.start_time or 0)
    if as_json:
        print(json.dumps([_details(j) for j in jobs], indent=2, default=str), file=out)
        return 0
    if not jobs:
        print("(no raymerge jobs)" if not every else "(no jobs)", file=out)
        return 0
    width = max(len(j.submission_id or j.job_id or "") for j in jobs)
    for j in jobs:
        ident = j.submission_id or j.job_id or "-"
        line = f"{ident:<{width}}  {j.status!s:<9}  {_when(j.start_time)}  {j.entrypoint}"
        print(line, file=out)
    return 0
