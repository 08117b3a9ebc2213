"""Entry points: parse, call the API, render progress and the report, map errors to exit codes.

0 success; 2 config or input rejected before anything was written; 1 failure during the run;
130 cancelled with Ctrl-C; 3 (submit, job logs --follow) the job server stayed unreachable, so the
job's outcome is unknown. A submitted job's own code passes through. Errors are one message;
`--debug` shows the traceback.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click
import yaml

from raymerge import api, jobs
from raymerge.errors import RaymergeError
from raymerge.report import Progress
from raymerge.submit import submit_config


def _unwrap(exc: BaseException) -> BaseException:
    """Find our own error inside Ray's task/user-code wrappers, so the user sees its message.

    Otherwise the error a Ray task raised, not the wrapper, whose text is the remote traceback.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, RaymergeError) and type(cur).__module__.startswith("raymerge"):
            return cur
        cur = getattr(cur, "cause", None) or cur.__cause__ or cur.__context__
    while type(exc).__module__.startswith("ray."):
        cause = getattr(exc, "cause", None)  # Ray's wrappers keep the task's error here
        if not isinstance(cause, BaseException):
            break
        exc = cause
    return exc


def _is_io_error(exc: BaseException) -> bool:
    """Storage that failed under the run (disk full, endpoint unreachable): the user's to fix, not a bug."""
    from aiohttp import ClientError
    from botocore.exceptions import BotoCoreError

    return isinstance(exc, (OSError, BotoCoreError, ClientError))


def _guarded(debug: bool, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except KeyboardInterrupt:
        click.echo("raymerge: cancelled; staging removed, nothing committed", err=True)
        sys.exit(130)
    except Exception as exc:
        err = _unwrap(exc)
        if debug:
            traceback.print_exception(exc)
        if isinstance(err, RaymergeError) or _is_io_error(err):
            click.echo(f"raymerge: error: {err}", err=True)
            sys.exit(getattr(err, "exit_code", 1))
        click.echo(f"raymerge: failed: {type(err).__name__}: {err}", err=True)
        if not debug:
            click.echo("(run again with --debug for the traceback)", err=True)
        sys.exit(1)


debug_option = click.option("--debug", is_flag=True, help="Show tracebacks and Ray's own logs.")
executor_option = click.option(
    "--executor",
    type=click.Choice(["auto", "ray", "in-process"]),
    default=None,
    help="Where tasks run: auto (this process for small inputs, Ray otherwise; the default), ray, in-process.",
)
set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override a config value (repeatable).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="raymerge")
def main() -> None:
    """Merge, join and split text, WebDataset and LeRobot datasets on Ray."""


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@set_option
@click.option("--overwrite", is_flag=True, help="Replace an existing output (only at commit).")
@click.option("--address", default=None, help="Ray cluster to attach to (default: start Ray locally).")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@executor_option
@debug_option
def run(
    config: str,
    overrides: tuple[str, ...],
    overwrite: bool,
    address: str | None,
    quiet: bool,
    as_json: bool,
    executor: str | None,
    debug: bool,
) -> None:
    """Run the merge/join/split described by CONFIG."""
    progress = Progress(enabled=not quiet)
    report = _guarded(
        debug,
        lambda: api.run(
            config,
            overrides=overrides,
            overwrite=overwrite or None,
            address=address,
            progress=progress,
            executor=executor,
        ),
    )
    click.echo(json.dumps(report.to_dict(), indent=2, default=str) if as_json else report.render())


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@set_option
@click.option("--overwrite", is_flag=True, help="Plan as if the existing output will be replaced.")
@click.option("--address", default=None, help="Ray cluster to attach to (default: start Ray locally).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@executor_option
@debug_option
def plan(
    config: str,
    overrides: tuple[str, ...],
    overwrite: bool,
    address: str | None,
    as_json: bool,
    executor: str | None,
    debug: bool,
) -> None:
    """Check CONFIG and print what a run would write; write nothing."""
    result = _guarded(
        debug,
        lambda: api.plan(config, overrides=overrides, overwrite=overwrite or None, address=address, executor=executor),
    )
    report = result.report
    click.echo(json.dumps(report.to_dict(), indent=2, default=str) if as_json else report.render())


job_address_option = click.option(
    "--address",
    default=None,
    help="The cluster's job server (dashboard), e.g. http://HEAD:8265 "
    "[default: RAY_API_SERVER_ADDRESS, else RAY_ADDRESS; --address wins].",
)
reconnect_option = click.option(
    "--reconnect-timeout",
    default=600.0,
    show_default=True,
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="How long to keep re-attaching to a job server that cannot be reached before giving up (exit 3).",
)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@set_option
@click.option("--overwrite", is_flag=True, help="Replace an existing output (only at commit).")
@job_address_option
@click.option(
    "--env",
    "env_names",
    multiple=True,
    metavar="NAME",
    help="Send this machine's value of NAME to the job (repeatable). Not for credentials: the cluster uses its "
    "own identity, and names that look like one are refused.",
)
@click.option(
    "--with-deps",
    is_flag=True,
    help="Install raymerge's pinned dependencies for this job (a pip runtime_env), for a cluster image without them.",
)
@click.option(
    "--runtime-env",
    "runtime_env_file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    metavar="FILE",
    help="A Ray runtime_env (YAML or JSON) merged into the job's: pip, env_vars, py_modules, container, ...",
)
@click.option("--no-wait", is_flag=True, help="Print the job id and return instead of streaming the logs.")
@reconnect_option
@debug_option
def submit(
    config: str,
    overrides: tuple[str, ...],
    overwrite: bool,
    address: str | None,
    env_names: tuple[str, ...],
    with_deps: bool,
    runtime_env_file: str | None,
    no_wait: bool,
    reconnect_timeout: float,
    debug: bool,
) -> None:
    """Run CONFIG as a Ray job on a cluster; stream its logs and exit with the job's exit code.

    The config's ${VAR}s are resolved on the cluster. Exit codes: the job's own (0, 1, 2, 130), or 3
    when the job server stayed unreachable and the job's outcome is unknown.
    """
    code = _guarded(
        debug,
        lambda: submit_config(
            config,
            address,
            overrides=overrides,
            overwrite=overwrite,
            env_names=env_names,
            runtime_env_file=runtime_env_file,
            with_deps=with_deps,
            wait=not no_wait,
            reconnect_timeout=reconnect_timeout,
            out=sys.stdout,
            err=sys.stderr,
        ),
    )
    sys.exit(code)


@main.group()
def job() -> None:
    """Follow and control jobs `raymerge submit` started: status, logs, stop, list."""


@job.command("status")
@click.argument("job_id")
@job_address_option
@click.option("--json", "as_json", is_flag=True, help="Print the job's details as JSON.")
@debug_option
def job_status_command(job_id: str, address: str | None, as_json: bool, debug: bool) -> None:
    """Say whether JOB_ID is pending, running or over, and how it ended."""
    sys.exit(_guarded(debug, lambda: jobs.job_status(job_id, address, as_json=as_json, out=sys.stdout, err=sys.stderr)))


@job.command("logs")
@click.argument("job_id")
@job_address_option
@click.option("-f", "--follow", "follow_logs", is_flag=True, help="Stream until the job ends; exit with its code.")
@reconnect_option
@debug_option
def job_logs_command(
    job_id: str, address: str | None, follow_logs: bool, reconnect_timeout: float, debug: bool
) -> None:
    """Print JOB_ID's log; with --follow, re-attach to a running job (Ctrl-C stops following, not the job)."""
    sys.exit(
        _guarded(
            debug,
            lambda: jobs.job_logs(
                job_id,
                address,
                follow_logs=follow_logs,
                reconnect_timeout=reconnect_timeout,
                out=sys.stdout,
                err=sys.stderr,
            ),
        )
    )


@job.command("stop")
@click.argument("job_id")
@job_address_option
@click.option(
    "--wait", "wait_s", default=60.0, show_default=True, type=click.FloatRange(min=0), metavar="SECONDS",
    help="How long to wait for the job to stop.",
)  # fmt: skip
@debug_option
def job_stop_command(job_id: str, address: str | None, wait_s: float, debug: bool) -> None:
    """Stop JOB_ID; its staged output is removed and nothing is committed."""
    sys.exit(_guarded(debug, lambda: jobs.job_stop(job_id, address, wait_s=wait_s, out=sys.stdout, err=sys.stderr)))


@job.command("list")
@job_address_option
@click.option("--all", "every", is_flag=True, help="Every job on the cluster, not only raymerge's.")
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as JSON.")
@debug_option
def job_list_command(address: str | None, every: bool, as_json: bool, debug: bool) -> None:
    """List the cluster's raymerge jobs, oldest first."""
    sys.exit(
        _guarded(debug, lambda: jobs.job_list(address, every=every, as_json=as_json, out=sys.stdout, err=sys.stderr))
    )


@main.command()
@click.argument("path")
@click.option(
    "--storage-option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="fsspec storage option, e.g. endpoint_url=http://127.0.0.1:9000 (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@debug_option
def inspect(path: str, options: tuple[str, ...], as_json: bool, debug: bool) -> None:
    """Say what the dataset at PATH is: family, format, counts, columns."""
    info = _guarded(debug, lambda: api.inspect(path, _options(options)))
    click.echo(
        json.dumps(info, indent=2, default=str)
        if as_json
        else yaml.safe_dump(info, sort_keys=False, allow_unicode=True, width=110).rstrip()
    )


@main.command()
@click.argument("target")
@click.option("-n", "count", default=100, show_default=True, type=click.IntRange(min=1), help="How many records.")
@click.option("--storage-option", "options", multiple=True, metavar="KEY=VALUE", help="fsspec storage option.")
@set_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON lines.")
@debug_option
def preview(
    target: str, count: int, options: tuple[str, ...], overrides: tuple[str, ...], as_json: bool, debug: bool
) -> None:
    """Show the first records of a dataset PATH, or of what CONFIG would write."""
    records = _guarded(
        debug, lambda: api.preview(target, count, storage_options=_options(options), overrides=overrides)
    )
    if as_json:
        for r in records:
            click.echo(json.dumps(r, default=str, ensure_ascii=False))
    else:
        click.echo(render_records(records))


def _options(pairs: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r}: expected KEY=VALUE", param_hint="--storage-option")
        out[key] = yaml.safe_load(value)
    return out


def render_records(records: list[dict[str, Any]], width: int = 110) -> str:
    """Two columns for input/output pairs; an indented block per record otherwise."""
    if not records:
        return "(no records)"
    if all(set(r) >= {"input", "output"} for r in records):
        col = (width - 9) // 2
        lines = [f"{'#':>5}  {'input':<{col}}  output", f"{'':>5}  {'-' * col}  {'-' * col}"]
        for i, r in enumerate(records):
            left = _one_line(r["input"], col)
            right = _one_line(r["output"], col)
            lines.append(f"{i:>5}  {left:<{col}}  {right}")
        return "\n".join(lines)
    blocks = []
    for i, r in enumerate(records):
        body = yaml.safe_dump(r, sort_keys=False, allow_unicode=True, width=width).rstrip()
        blocks.append(f"--- record {i}\n{body}")
    return "\n".join(blocks)


def _one_line(text: Any, width: int) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= width else s[: width - 1] + "…"


if __name__ == "__main__":
    main()
