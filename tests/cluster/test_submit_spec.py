"""What `raymerge submit` sends, decided on the client from plain values: no cluster needed."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from raymerge.errors import InvalidInput, RunFailed
from raymerge.runtime import forwarded_env
from raymerge.submit import (
    PACKAGE_DIR,
    auth_headers,
    auth_token,
    entrypoint,
    exit_code,
    job_env,
    referenced_env,
)


def test_referenced_env_finds_every_variable_in_nested_values():
    raw = {
        "inputs": [{"path": "s3://${BUCKET}/a", "storage_options": {"key": "${KEY_ID}", "secret": "${SECRET:-x}"}}],
        "output": {"path": "${OUT}"},
        "n": 3,
    }
    assert referenced_env(raw) == {"BUCKET", "KEY_ID", "SECRET", "OUT"}
    assert referenced_env({"output": {"path": "/plain"}}) == set()


def test_job_env_forwards_referenced_and_storage_variables_only():
    environ = {
        "BUCKET": "b1",
        "UNRELATED": "nope",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t",
        "HF_TOKEN": "hf",
        "HOME": "/root",
    }
    raw = {"inputs": [{"path": "s3://${BUCKET}/x"}, {"path": "${MISSING:-/y}"}]}
    env = job_env(raw, ["output.path=s3://${BUCKET}/out"], environ)
    assert env == {"BUCKET": "b1", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "HF_TOKEN": "hf"}


def test_forwarded_env_leaves_out_what_the_submitted_job_already_sets():
    job_config = {"runtime_env": {"env_vars": {"AWS_ACCESS_KEY_ID": "k"}, "py_modules": ["gcs://x.zip"]}}
    environ = {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(job_config),
    }
    assert forwarded_env(environ) == {"AWS_SECRET_ACCESS_KEY": "s"}
    assert forwarded_env({"AWS_ACCESS_KEY_ID": "k"}) == {"AWS_ACCESS_KEY_ID": "k"}


def test_entrypoint_runs_the_uploaded_package_with_overrides_quoted():
    line = entrypoint("my config.yaml", ["output.path=s3://b/o u t"], overwrite=True)
    assert shlex.split(line) == [
        "python", "-m", "raymerge.cli", "run", "my config.yaml",
        "--set", "output.path=s3://b/o u t", "--overwrite",
    ]  # fmt: skip
    assert shlex.split(entrypoint("c.yaml", [], overwrite=False))[-1] == "c.yaml"
    assert (PACKAGE_DIR / "cli.py").is_file()


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
    from raymerge.submit import build_job

    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"kind": "nosuchkind", "operation": "x", "inputs": [], "output": {}}))
    with pytest.raises(InvalidInput, match="kind: 'nosuchkind' is not known"):
        build_job(config, environ={})
    with pytest.raises(InvalidInput, match="file not found"):
        build_job(tmp_path / "missing.yaml", environ={})
