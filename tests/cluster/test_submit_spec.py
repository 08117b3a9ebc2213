"""What `raymerge submit` sends and how it follows a job, decided on the client from plain values: no cluster."""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ray.job_submission import JobStatus

from raymerge.errors import InvalidInput, RunFailed
from raymerge.job_driver import LAUNCHER_NAME, SPEC_NAME, check
from raymerge.jobenv import env_refs, merge_runtime_env, requirement_modules, requirements, sent_env
from raymerge.jobs import EXIT_UNKNOWN, auth_headers, auth_token, exit_code, follow
from raymerge.runtime import choose_address, looks_secret
from raymerge.submit import PACKAGE_DIR, build_job, entrypoint


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def text_config(tmp_path: Path, **output) -> Path:
    return write(
        tmp_path / "job.yaml",
        {
            "kind": "text",
            "operation": "concat",
            "inputs": [{"path": "s3://${BUCKET}/a.jsonl", "storage_options": {"endpoint_url": "${S3_URL:-http://x}"}}],
            "output": {"path": "s3://${BUCKET}/out.jsonl", **output},
        },
    )


def test_env_refs_name_every_variable_with_where_it_is_read():
    raw = {
        "inputs": [{"path": "s3://${BUCKET}/a", "storage_options": {"key": "${KEY_ID}", "secret": "${SECRET:-x}"}}],
        "output": {"path": "${OUT}"},
        "n": 3,
    }
    found = {(r.name, r.where, r.default) for r in env_refs(raw)}
    assert found == {
        ("BUCKET", "inputs[0].path", False),
        ("KEY_ID", "inputs[0].storage_options.key", False),
        ("SECRET", "inputs[0].storage_options.secret", True),
        ("OUT", "output.path", False),
    }
    assert env_refs({"output": {"path": "/plain"}}) == []


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("AWS_SECRET_ACCESS_KEY", True),
        ("AWS_ACCESS_KEY_ID", True),
        ("AWS_SESSION_TOKEN", True),
        ("HF_TOKEN", True),
        ("DB_PASSWORD", True),
        ("GITHUB_API_KEY", True),
        ("AWS_PROFILE", False),
        ("AWS_ENDPOINT_URL_S3", False),
        ("TOKENIZER_NAME", False),
        ("KEYS_PATH", False),
        ("BUCKET", False),
    ],
)
def test_credential_names_are_told_by_their_words(name, secret):
    assert looks_secret(name) is secret


def test_only_named_non_secret_variables_are_sent():
    environ = {"BUCKET": "b1", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "HF_TOKEN": "hf", "AWS_PROFILE": "dev"}
    assert sent_env(["BUCKET", "AWS_PROFILE"], environ) == {"BUCKET": "b1", "AWS_PROFILE": "dev"}
    assert sent_env([], environ) == {}
    for name in ("AWS_SECRET_ACCESS_KEY", "HF_TOKEN"):
        with pytest.raises(InvalidInput, match=rf"--env {name}: looks like a credential"):
            sent_env([name], environ)
    with pytest.raises(InvalidInput, match="--env MISSING: not set on this machine"):
        sent_env(["MISSING"], environ)
    with pytest.raises(InvalidInput, match="expected a variable name"):
        sent_env(["A=B"], environ)


def test_the_job_gets_the_config_unresolved_and_no_environment(tmp_path: Path):
    environ = {
        "BUCKET": "client-bucket",
        "AWS_ACCESS_KEY_ID": "AKIACLIENT",
        "AWS_SECRET_ACCESS_KEY": "client-secret",
        "AWS_SESSION_TOKEN": "client-session",
        "HF_TOKEN": "hf-client",
        "AWS_PROFILE": "dev",
    }
    config = text_config(tmp_path)
    spec = build_job(config, environ=environ, overrides=["output.path=s3://${BUCKET}/other.jsonl"])

    assert "env_vars" not in spec.runtime_env
    sent = json.dumps([spec.runtime_env, spec.entrypoint, spec.launcher_spec])
    for value in environ.values():
        assert value not in sent
    assert shlex.split(spec.entrypoint)[:4] == ["python", LAUNCHER_NAME, "run", "job.yaml"]
    assert "output.path=s3://${BUCKET}/other.jsonl" in shlex.split(spec.entrypoint)  # resolved on the cluster
    refs = {r["name"]: r for r in spec.launcher_spec["env_refs"]}
    assert set(refs) == {"BUCKET", "S3_URL"}
    assert refs["S3_URL"]["default"] and not refs["BUCKET"]["default"]
    notes = "\n".join(spec.notes)
    assert "${BUCKET} (--set output.path, inputs[0].path, output.path) on the cluster" in notes
    assert "pass --env BUCKET" in notes

    (tmp_path / "wd").mkdir()
    spec.write(config, tmp_path / "wd")
    assert (tmp_path / "wd" / "job.yaml").read_text() == config.read_text()
    assert (tmp_path / "wd" / LAUNCHER_NAME).read_text() == (PACKAGE_DIR / "job_driver.py").read_text()
    assert json.loads((tmp_path / "wd" / SPEC_NAME).read_text()) == spec.launcher_spec


def test_env_sends_named_settings_and_a_variable_only_the_cluster_has_is_checked_with_a_placeholder(tmp_path):
    config = text_config(tmp_path)
    spec = build_job(config, environ={"BUCKET": "b1"}, env_names=["BUCKET"])
    assert spec.runtime_env["env_vars"] == {"BUCKET": "b1"}
    assert "BUCKET" not in {r["name"] for r in spec.launcher_spec["env_refs"]}
    assert "environment sent: BUCKET" in spec.describe()

    spec = build_job(config, environ={})  # BUCKET set on the cluster only
    assert "it is not set here either, so it was checked with a placeholder" in "\n".join(spec.notes)


def test_credentials_in_set_are_refused_and_literal_ones_in_the_config_are_flagged(tmp_path: Path):
    config = text_config(tmp_path)
    with pytest.raises(InvalidInput, match=r"--set inputs.0.storage_options.secret: would put a credential"):
        build_job(config, environ={"BUCKET": "b"}, overrides=["inputs.0.storage_options.secret=abc"])
    spec = build_job(config, environ={"BUCKET": "b"}, overrides=["inputs.0.storage_options.secret=${S}"])
    assert "${S}" in spec.entrypoint
    literal = write(
        tmp_path / "lit.yaml",
        {
            **yaml.safe_load(config.read_text()),
            "output": {"path": "s3://b/o.jsonl", "storage_options": {"secret": "x"}},
        },
    )
    notes = "\n".join(build_job(literal, environ={"BUCKET": "b"}).notes)
    assert "output.storage_options.secret holds a literal credential" in notes


def test_local_paths_are_refused_unless_shared_and_absolute(tmp_path: Path):
    base = {"kind": "text", "operation": "concat", "inputs": [{"path": "data/a.jsonl"}], "output": {"path": "/o.jsonl"}}
    with pytest.raises(InvalidInput) as refused:
        build_job(write(tmp_path / "c.yaml", base), environ={})
    message = str(refused.value)
    assert "inputs[0].path: data/a.jsonl is on this machine's disk" in message
    assert "output.path: /o.jsonl is on this machine's disk" in message
    assert "set inputs[0].shared: true" in message

    shared = {
        **base,
        "inputs": [{"path": "data/a.jsonl", "shared": True}],
        "output": {"path": "/o.jsonl", "shared": True},
    }
    with pytest.raises(InvalidInput, match=r"inputs\[0\].path: data/a.jsonl: a shared path must be absolute"):
        build_job(write(tmp_path / "c.yaml", shared), environ={})
    shared["inputs"][0]["path"] = "/mnt/efs/a.jsonl"
    assert build_job(write(tmp_path / "c.yaml", shared), environ={}).config_name == "c.yaml"


def test_with_deps_ships_the_pinned_requirements_except_ray(tmp_path: Path):
    reqs = requirements()
    assert any(r.startswith("fsspec==") for r in reqs) and any(r.startswith("ray[") for r in reqs)
    assert not any(r.startswith(("pytest", "moto")) for r in reqs)  # test extras are not run-time needs
    spec = build_job(text_config(tmp_path), environ={"BUCKET": "b"}, with_deps=True)
    packages = spec.runtime_env["pip"]["packages"]
    assert sorted(packages) == sorted(r for r in reqs if not r.startswith("ray["))
    modules = requirement_modules(reqs)
    assert modules[next(r for r in reqs if r.startswith("pyyaml"))] == ["yaml"]
    assert spec.launcher_spec["requires"] == modules


def test_runtime_env_file_merges_into_what_submit_builds(tmp_path: Path):
    base = {"py_modules": ["/pkg"], "excludes": ["*.pyc"], "env_vars": {"A": "1"}}
    merged, notes = merge_runtime_env(
        base,
        {"env_vars": {"B": "2", "MY_TOKEN": "t"}, "py_modules": ["/extra"], "config": {"setup_timeout_seconds": 600}},
        "f",
    )
    assert merged["env_vars"] == {"A": "1", "B": "2", "MY_TOKEN": "t"}
    assert merged["py_modules"] == ["/pkg", "/extra"]
    assert merged["config"] == {"setup_timeout_seconds": 600}
    assert notes and "MY_TOKEN, which looks like a credential" in notes[0]
    with pytest.raises(InvalidInput, match="working_dir is set by raymerge submit"):
        merge_runtime_env(base, {"working_dir": "."}, "f")
    with pytest.raises(InvalidInput, match="cannot be combined with --with-deps"):
        merge_runtime_env({**base, "pip": {"packages": []}}, {"uv": ["x"]}, "f")

    path = tmp_path / "env.json"
    path.write_text(json.dumps({"env_vars": {"X": "1"}}))
    spec = build_job(text_config(tmp_path), environ={"BUCKET": "b"}, runtime_env_file=path)
    assert spec.runtime_env["env_vars"] == {"X": "1"}
    path.write_text("- a list")
    with pytest.raises(InvalidInput, match="expected a mapping"):
        build_job(text_config(tmp_path), environ={"BUCKET": "b"}, runtime_env_file=path)


def test_entrypoint_runs_the_launcher_with_overrides_quoted():
    line = entrypoint("my config.yaml", ["output.path=s3://b/o u t"], overwrite=True)
    assert shlex.split(line) == [
        "python", LAUNCHER_NAME, "run", "my config.yaml", "--address", "auto",
        "--set", "output.path=s3://b/o u t", "--overwrite",
    ]  # fmt: skip
    assert shlex.split(entrypoint("c.yaml", [], overwrite=False))[-3:] == ["c.yaml", "--address", "auto"]


def test_launcher_names_what_is_missing_in_one_line():
    code, lines = check({"requires": {"nosuchdep==1.0": ["nosuchdep_xyz"], "pyyaml==6.0.3": ["yaml"]}}, {})
    assert (code, len(lines)) == (1, 1)
    assert "lacks nosuchdep==1.0: run the cluster on an image" in lines[0] and "--with-deps" in lines[0]

    refs = [
        {"name": "BUCKET", "where": "inputs[0].path", "default": False, "secret": False},
        {"name": "OPT", "where": "output.path", "default": True, "secret": False},
        {"name": "HF_TOKEN", "where": "inputs[1].storage_options.token", "default": False, "secret": True},
    ]
    code, lines = check({"env_refs": refs}, {"HF_TOKEN": "x"})
    assert code == 2 and len(lines) == 1
    assert "${BUCKET} (inputs[0].path), not set in the job's environment on the cluster" in lines[0]
    assert "--env NAME" in lines[0]
    assert check({"env_refs": refs}, {"HF_TOKEN": "x", "BUCKET": "b"}) == (0, [])


def test_launcher_run_by_a_python_without_the_dependencies_prints_one_line(tmp_path: Path):
    """The launcher as the job runs it, by a Python without site-packages: no traceback."""
    (tmp_path / LAUNCHER_NAME).write_text((PACKAGE_DIR / "job_driver.py").read_text())
    (tmp_path / SPEC_NAME).write_text(json.dumps({"requires": requirement_modules(requirements())}))
    done = subprocess.run(
        [sys.executable, "-S", LAUNCHER_NAME, "run", "job.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "lacks " in done.stderr and "fsspec==" in done.stderr


def test_auth_token_follows_rays_precedence(tmp_path: Path):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    default = tmp_path / "default_token"
    default.write_text("from-default")
    assert auth_token({"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(token_file)}, default) == "from-env"
    assert auth_token({"RAY_AUTH_TOKEN_PATH": str(token_file)}, default) == "from-file"
    assert auth_token({"RAY_AUTH_MODE": "token"}, default) == "from-default"
    # A local default token is not sent to a cluster nobody said uses token auth.
    assert auth_token({}, default) is None
    assert auth_headers({"RAY_AUTH_TOKEN": "t"}) == {"Authorization": "Bearer t"}
    assert auth_headers({"RAY_AUTH_MODE": "disabled"}) == {}


def test_unreadable_token_file_is_a_clear_error_without_the_token(tmp_path: Path):
    with pytest.raises(RunFailed, match=r"cannot read the Ray auth token file .*missing"):
        auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})


def test_an_explicit_address_wins_over_the_environment_with_a_warning():
    env = {"RAY_ADDRESS": "http://other:8265", "RAY_API_SERVER_ADDRESS": "http://api:8265"}
    names = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
    address, warning = choose_address("http://mine:8265", env, names)
    assert address == "http://mine:8265"
    assert warning == (
        "the address http://mine:8265 differs from RAY_API_SERVER_ADDRESS=http://api:8265, "
        "RAY_ADDRESS=http://other:8265; using http://mine:8265"
    )
    assert choose_address(None, env, names) == ("http://api:8265", None)
    assert choose_address("http://other:8265/", {"RAY_ADDRESS": "http://other:8265"}) == ("http://other:8265/", None)
    assert choose_address("auto", {"RAY_ADDRESS": "10.0.0.1:6379"}) == ("10.0.0.1:6379", None)
    assert choose_address(None, {}) == (None, None)


@pytest.mark.parametrize(
    ("status", "driver", "expected"),
    [
        ("SUCCEEDED", 0, 0),
        ("FAILED", 2, 2),
        ("FAILED", 1, 1),
        ("FAILED", None, 1),
        ("FAILED", 137, 1),
        ("STOPPED", None, 130),
    ],
)
def test_exit_code_passes_the_runs_own_codes_through(status, driver, expected):
    assert exit_code(status, driver) == expected


def test_invalid_config_is_rejected_before_anything_is_sent(tmp_path: Path):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"kind": "nosuchkind", "operation": "x", "inputs": [], "output": {}}))
    with pytest.raises(InvalidInput, match="kind: 'nosuchkind' is not known"):
        build_job(config, environ={})
    with pytest.raises(InvalidInput, match="file not found"):
        build_job(tmp_path / "missing.yaml", environ={})


# -- following a job through a job server that drops, stalls or goes away -----------------------------


class Info:
    def __init__(self, status: JobStatus, code: int | None = None, message: str = "") -> None:
        self.status, self.driver_exit_code, self.message = status, code, message


class FakeJobServer:
    """A job whose log is `log`; `streams` scripts each attach: how many characters it delivers before
    it drops (None: all, then a clean end; "hang": stalls silently; "down": refused), and `unreachable`
    how many status calls fail."""

    def __init__(self, log: str, streams: list, unreachable: int = 0, end: Info | None = None) -> None:
        self.log, self.streams, self.unreachable = log, list(streams), unreachable
        self.end = end or Info(JobStatus.FAILED, 2, "Job entrypoint command failed with exit code 2\nlast logs")
        self.stopped = False

    async def tail_job_logs(self, job_id: str):
        import asyncio

        plan = self.streams.pop(0) if self.streams else None
        if plan == "down":
            raise ConnectionError("connection refused")
        if plan == "hang":
            await asyncio.sleep(3600)
        cut = len(self.log) if plan is None else plan
        for i in range(0, cut, 4):
            yield self.log[i : min(i + 4, cut)]
        if plan is not None:
            raise RuntimeError("WebSocket connection closed unexpectedly with close code 1006")

    def _status(self) -> JobStatus:
        if self.unreachable:
            self.unreachable -= 1
            raise ConnectionError("connection refused")
        return self.end.status if not self.streams else JobStatus.RUNNING

    def get_job_status(self, job_id: str) -> JobStatus:
        return self._status()

    def get_job_info(self, job_id: str) -> Info:
        status = self._status()
        return self.end if status.is_terminal() else Info(status)

    def get_job_logs(self, job_id: str) -> str:
        return self.log

    def stop_job(self, job_id: str) -> bool:
        self.stopped = True
        return True


def run_follow(server: FakeJobServer, **kwargs) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = follow(server, "job1", "http://head:8265", out, err, sleep=lambda s: None, **kwargs)
    return code, out.getvalue(), err.getvalue()


LOG = "planning text concat\nwriting to staging\n" + "".join(f"line {i}\n" for i in range(20))


def test_a_dropped_stream_is_re_attached_without_repeating_and_the_exit_code_is_the_jobs():
    server = FakeJobServer(LOG, streams=[30, None], unreachable=1)
    code, out, err = run_follow(server)
    assert code == 2
    assert out == LOG
    assert err.count("lost the log stream of job job1") == 1
    assert err.count("re-attached to job job1") == 1
    assert "raymerge: job job1 failed (exit code 2): Job entrypoint command failed with exit code 2\n" in err
    assert "last logs" not in err  # the log is on screen already


def test_every_drop_is_reported_and_re_attached():
    code, out, err = run_follow(FakeJobServer(LOG, streams=[30, 55, None]))
    assert (code, out) == (2, LOG)
    assert err.count("lost the log stream") == 2 and err.count("re-attached") == 2


def test_a_stream_that_stalls_silently_ends_when_the_job_does():
    server = FakeJobServer(LOG, streams=["hang"], end=Info(JobStatus.SUCCEEDED, 0))
    server._status = lambda: JobStatus.SUCCEEDED  # the job ends while the stream hangs
    code, out, _ = run_follow(server, check_every=0.05)
    assert (code, out) == (0, LOG)


def test_a_job_server_that_stays_away_gives_exit_3_with_the_commands_to_look():
    server = FakeJobServer(LOG, streams=[10, "down", "down"], unreachable=10**6)
    code, out, err = run_follow(server, reconnect_timeout=0.0)
    assert code == EXIT_UNKNOWN
    assert out == LOG[:10]
    assert "raymerge job status job1 --address http://head:8265" in err
    assert "raymerge job logs job1 --follow --address http://head:8265" in err


def test_ctrl_c_stops_a_submitted_job_but_only_detaches_from_a_followed_one():
    def interrupted(_s: float) -> None:
        raise KeyboardInterrupt

    for stop, stopped in ((True, True), (False, False)):
        server = FakeJobServer(LOG, streams=[5, None])
        out, err = io.StringIO(), io.StringIO()
        code = follow(server, "job1", "http://h", out, err, sleep=interrupted, stop_on_interrupt=stop)
        assert code == 130 and server.stopped is stopped
