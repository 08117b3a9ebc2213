"""Credentials never leave the config, nor the shell a job is submitted from; tar member names cannot escape the
output; SQL takes parameters only."""

from __future__ import annotations

import ast
import io
import json
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

import raymerge
from raymerge import api
from raymerge.cli import main
from raymerge.errors import InvalidInput
from raymerge.storage import MANIFEST
from raymerge.webdataset import samples as wds_samples
from tests.helpers import run_cli, tree_digest
from tests.reliability.conftest import wds_config, write_config

SECRET_FROM_ENV = "env-secret-4f1d8a2c9b"
SECRET_LITERAL = "literal-secret-7e3b0c5d1a"


def test_credentials_never_appear_in_output_logs_reports_or_manifest(ray_address, s3, tmp_path):
    fs, bucket, endpoint = s3["fs"], s3["bucket"], s3["endpoint_url"]
    wds_samples.write_shards(tmp_path / "in", wds_samples.image_samples(wds_samples.keys(6), 100), 2)
    fs.put(str(tmp_path / "in"), f"{bucket}/in", recursive=True)
    # The loopback S3 server accepts any key pair; these are the ones the run must not reveal.
    options = {"endpoint_url": endpoint, "key": "${RAYMERGE_TEST_KEY}", "secret": SECRET_LITERAL}
    cfg = wds_config(f"s3://{bucket}/in", f"s3://{bucket}/out", storage_options=options)
    cfg["inputs"][0]["storage_options"] = {**options, "secret": "${RAYMERGE_TEST_SECRET}"}
    path = write_config(tmp_path / "run.yaml", cfg)
    env = {"RAYMERGE_TEST_KEY": "AKIA" + SECRET_FROM_ENV, "RAYMERGE_TEST_SECRET": SECRET_FROM_ENV}

    done = run_cli("run", str(path), "--json", "--address", ray_address, env=env)
    assert done.returncode == 0, done.stderr
    # The plan and a refused run (the output exists now, --debug shows the traceback) in-process, on the suite's Ray.
    runner = CliRunner(env=env)
    plan = runner.invoke(main, ["plan", str(path), "--overwrite", "--json"])
    refused = runner.invoke(main, ["run", str(path), "--debug"])
    assert (plan.exit_code, refused.exit_code) == (0, 2), plan.stderr + refused.stderr
    manifest = fs.cat(f"{bucket}/out/{MANIFEST}").decode()
    assert json.loads(manifest)["config"]["output"]["storage_options"]["secret"] == "***"
    shown = manifest + done.stdout + done.stderr + plan.stdout + plan.stderr + refused.stdout + refused.stderr
    for secret in (SECRET_FROM_ENV, SECRET_LITERAL):
        assert secret not in shown


def test_a_single_file_outputs_report_beside_it_keeps_no_credential(ray_address, s3, tmp_path):
    from raymerge.text import samples as text_samples

    fs, bucket = s3["fs"], s3["bucket"]
    text_samples.write_jsonl(tmp_path / "a.jsonl", text_samples.pairs("a", 7))
    fs.put(str(tmp_path / "a.jsonl"), f"{bucket}/in/a.jsonl")
    options = {"endpoint_url": s3["endpoint_url"], "key": "${RAYMERGE_TEST_KEY}", "secret": SECRET_LITERAL}
    cfg = {
        "kind": "text",
        "operation": "concat",
        "inputs": [
            {"path": f"s3://{bucket}/in/a.jsonl", "storage_options": {**options, "secret": "${RAYMERGE_TEST_SECRET}"}}
        ],
        "output": {"path": f"s3://{bucket}/out/merged.jsonl", "storage_options": options},
    }
    path = write_config(tmp_path / "run.yaml", cfg)
    env = {"RAYMERGE_TEST_KEY": "AKIA" + SECRET_FROM_ENV, "RAYMERGE_TEST_SECRET": SECRET_FROM_ENV}

    done = run_cli("run", str(path), "--address", ray_address, env=env)

    assert done.returncode == 0, done.stderr
    sidecar = fs.cat(f"{bucket}/out/merged.jsonl.raymerge.json").decode()
    report = json.loads(sidecar)
    assert report["report"]["rows_out"] == 7
    assert report["config"]["output"]["storage_options"] == {**options, "key": "***", "secret": "***"}
    for secret in (SECRET_FROM_ENV, SECRET_LITERAL):
        assert secret not in sidecar + done.stdout + done.stderr


def test_a_submitted_job_carries_no_value_of_the_submitting_shell(tmp_path):
    """Everything `submit` would send: runtime_env, entrypoint, the launcher's spec and the job's files."""
    from raymerge.submit import build_job

    shell = {
        "AWS_ACCESS_KEY_ID": "AKIA" + SECRET_FROM_ENV,
        "AWS_SECRET_ACCESS_KEY": SECRET_FROM_ENV,
        "AWS_SESSION_TOKEN": "session-" + SECRET_FROM_ENV,
        "HF_TOKEN": "hf-" + SECRET_FROM_ENV,
        "RAYMERGE_TEST_SECRET": "var-" + SECRET_FROM_ENV,
        "BUCKET": "b",
    }
    cfg = {
        "kind": "text",
        "operation": "concat",
        "inputs": [{"path": "s3://${BUCKET}/a.jsonl", "storage_options": {"secret": "${RAYMERGE_TEST_SECRET}"}}],
        "output": {"path": "s3://${BUCKET}/out.jsonl"},
    }
    path = write_config(tmp_path / "job.yaml", cfg)
    spec = build_job(path, environ=shell, env_names=["BUCKET"], with_deps=True)
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    spec.write(path, job_dir)

    sent = json.dumps([spec.runtime_env, spec.entrypoint, spec.launcher_spec]) + "".join(
        p.read_text() for p in job_dir.iterdir()
    )
    assert SECRET_FROM_ENV not in sent
    assert spec.runtime_env["env_vars"] == {"BUCKET": "b"}
    refused = CliRunner(env=shell).invoke(
        main, ["submit", str(path), "--address", "http://127.0.0.1:9", "--env", "AWS_SECRET_ACCESS_KEY"]
    )
    assert refused.exit_code == 2 and "looks like a credential" in refused.output
    assert SECRET_FROM_ENV not in refused.output


def _evil_tar(path: Path, name: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for member in ("k1.jpg", name):
            info = tarfile.TarInfo(member)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))


@pytest.mark.parametrize(
    ("name", "message"),
    [("../../escaped.jpg", r"has a name with '\.\.'"), ("/tmp/escaped-absolute.jpg", r"has an absolute name")],
)
def test_tar_members_that_escape_are_rejected_and_nothing_lands_outside(ray_address, tmp_path, name, message):
    root = tmp_path / "sandbox"
    _evil_tar(root / "in" / "shard.tar", name)
    before = tree_digest(tmp_path)
    with pytest.raises(InvalidInput, match=rf"shard.tar: member '{name}' " + message):
        api.run(wds_config(root / "in", root / "out"))
    assert tree_digest(tmp_path) == before
    assert not (root / "out").exists()
    assert not Path("/tmp/escaped-absolute.jpg").exists() and not list(tmp_path.rglob("escaped*"))


def _sql_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("execute", "executemany", "executescript")
            and node.args
        ):
            yield node


def _built_at_run_time(arg: ast.expr) -> bool:
    """An f-string, `%` or `+` formatting, or `.format(...)`: SQL text that could carry a value."""
    if isinstance(arg, ast.JoinedStr | ast.BinOp):
        return True
    return isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute) and arg.func.attr == "format"


def test_sqlite_is_used_with_parameters_only():
    package = Path(raymerge.__file__).parent
    calls, offenders = 0, []
    for source in sorted(package.rglob("*.py")):
        for call in _sql_calls(ast.parse(source.read_text())):
            calls += 1
            if _built_at_run_time(call.args[0]):
                offenders.append(f"{source.relative_to(package)}:{call.lineno}")
    assert calls >= 10, "the scan must see the SQLite code it checks"
    assert offenders == []
