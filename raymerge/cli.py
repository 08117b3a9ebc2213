"""Entry points: parse, call the API, render progress and the report, map errors to exit codes.

0 success; 2 config or input rejected before anything was written; 1 failure during the run;
130 cancelled with Ctrl-C. Errors are one message; `--debug` shows the traceback.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click
import yaml

from raymerge import api
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
    while type(exc).__module__.startswith("ray.") and isinstance(getattr(exc, "cause", None), BaseException):
        exc = exc.cause
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
    """Merge, join and split text, WebDataset and LeRobot datasets on Ray Data."""


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


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@set_option
@click.option("--overwrite", is_flag=True, help="Replace an existing output (only at commit).")
@click.option(
    "--address",
    envvar="RAY_API_SERVER_ADDRESS",
    required=True,
    help="The cluster's job server (dashboard), e.g. http://HEAD:8265 [env RAY_API_SERVER_ADDRESS].",
)
@click.option("--no-wait", is_flag=True, help="Print the job id and return instead of streaming the logs.")
@debug_option
def submit(config: str, overrides: tuple[str, ...], overwrite: bool, address: str, no_wait: bool, debug: bool) -> None:
    """Run CONFIG as a Ray job on a cluster; stream its logs and exit with the job's exit code."""
    code = _guarded(
        debug,
        lambda: submit_config(
            config,
            address,
            overrides=overrides,
            overwrite=overwrite,
            wait=not no_wait,
            out=sys.stdout,
            err=sys.stderr,
        ),
    )
    sys.exit(code)


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
