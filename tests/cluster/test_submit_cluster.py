"""`raymerge submit` and `raymerge job` against a real Ray cluster on loopback, reading and writing the loopback
S3 server. A submitted job outlives the client: `--no-wait`, `raymerge job status/logs/list/stop`, and a log
stream cut mid-job (a proxy in front of the job server, as a port-forward or load balancer would drop it) that
`submit` re-attaches, exiting with the job's own code.

The cluster's nodes have an S3 identity of their own (keys and AWS_ENDPOINT_URL_S3 in their environment
from the start); the submitting side's credentials never reach them. A run succeeds with the cluster's
identity, the raymerge package that travels with the job and the variables named with `--env`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.cluster.jobtools import WAIT_S, CuttingProxy, Lines
from tests.cluster.local_cluster import LocalCluster
from tests.helpers import run_cli

# Files that name the run that wrote them: raymerge's manifest and Energon's random index identity.
RUN_IDENTITY = ("raymerge.json", ".nv-meta/index.uuid")


def tree_bytes(fs, root: str) -> dict[str, bytes]:
    """Every file of an output on S3 except those naming their run, by relative path."""
    files = {p[len(root) + 1 :]: p for p in sorted(fs.find(root))}
    return {rel: fs.cat(p) for rel, p in files.items() if rel not in RUN_IDENTITY}


def submit_and_compare(cluster, submit_env, s3, tmp_path, config: dict) -> tuple[dict[str, bytes], dict]:
    """Submit `config` writing to out/cluster, run it in-process to out/local; the two must be byte-identical."""
    import raymerge

    fs, bucket = s3["fs"], s3["bucket"]
    on_cluster = {**config, "output": {**config["output"], "path": f"s3://{bucket}/out/cluster"}}
    path = write_config(tmp_path, on_cluster)
    result = run_cli("submit", str(path), "--address", cluster.dashboard_url, env=submit_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"raymerge {config['kind']} {config['operation']}: ok" in result.stdout

    local = {**config, "output": {**config["output"], "path": f"s3://{bucket}/out/local"}}
    raymerge.run(local)
    produced = tree_bytes(fs, f"{bucket}/out/cluster")
    assert produced and produced == tree_bytes(fs, f"{bucket}/out/local")
    manifest = json.loads(fs.cat(f"{bucket}/out/cluster/raymerge.json"))
    return produced, manifest


def submitted_jobs(cluster: LocalCluster) -> list[str]:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(
        cluster.dashboard_url, headers={"Authorization": f"Bearer {cluster.env['RAY_AUTH_TOKEN']}"}
    )
    return sorted(j.submission_id for j in client.list_jobs() if j.submission_id)


def write_config(tmp_path: Path, data: dict, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def upload_text_inputs(s3: dict, tmp_path: Path) -> tuple[list[str], list[dict]]:
    """Two JSONL sources on S3, and the rows a concat of them must produce, in order."""
    from raymerge.text.samples import pairs, write_jsonl

    fs, bucket = s3["fs"], s3["bucket"]
    urls, rows = [], []
    for prefix, n in (("alpha", 7), ("beta", 5)):
        table = pairs(prefix, n)
        local = write_jsonl(tmp_path / "in" / f"{prefix}.jsonl", table)
        fs.put(str(local), f"{bucket}/in/{prefix}.jsonl")
        urls.append(f"s3://{bucket}/in/{prefix}.jsonl")
        rows += table.to_pylist()
    return urls, rows


def text_config(s3: dict, urls: list[str]) -> dict:
    options = {"endpoint_url": "${RAYMERGE_TEST_S3}"}
    return {
        "kind": "text",
        "operation": "concat",
        "inputs": [{"path": u, "storage_options": options} for u in urls],
        "output": {"path": f"s3://{s3['bucket']}/out/merged.jsonl", "storage_options": options},
    }


def submit_text(cluster: LocalCluster, submit_env: dict, s3: dict, config: Path):
    """`raymerge submit` of a text config whose endpoint comes from ${RAYMERGE_TEST_S3}, sent with --env."""
    env = {**submit_env, "RAYMERGE_TEST_S3": s3["endpoint_url"]}
    return run_cli("submit", str(config), "--address", cluster.dashboard_url, "--env", "RAYMERGE_TEST_S3", env=env)


def lerobot_merge_on_s3(s3: dict, lengths: dict[str, tuple[int, ...]], output: str) -> dict:
    """Small LeRobot datasets written straight to the bucket, and the config that merges them."""
    from raymerge.lerobot import samples

    fs, bucket, options = s3["fs"], s3["bucket"], s3["storage_options"]
    for name, lens in lengths.items():
        samples.make(fs, f"{bucket}/in/{name}", lengths=lens, cameras=1, height=16, width=16, seed=len(lens))
    return {
        "kind": "lerobot",
        "operation": "merge",
        "inputs": [{"path": f"s3://{bucket}/in/{n}", "storage_options": options} for n in lengths],
        "output": {"path": output, "storage_options": options},
    }


def read_jsonl(s3: dict, key: str) -> list[dict]:
    with s3["fs"].open(f"{s3['bucket']}/{key}", "rb") as f:
        return [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]


def test_run_rejected_on_the_cluster_exits_2_and_keeps_the_existing_output(cluster, submit_env, s3, tmp_path):
    urls, _ = upload_text_inputs(s3, tmp_path)
    s3["fs"].pipe(f"{s3['bucket']}/out/merged.jsonl", b"previous\n")
    config = write_config(tmp_path, text_config(s3, urls))

    result = submit_text(cluster, submit_env, s3, config)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "already exists" in result.stdout + result.stderr  # read through the endpoint --env sent
    assert "(environment sent: RAYMERGE_TEST_S3)" in result.stderr  # sent names are shown, never values
    assert s3["fs"].cat(f"{s3['bucket']}/out/merged.jsonl") == b"previous\n"


def test_invalid_config_submits_nothing(cluster, submit_env, s3, tmp_path):
    urls, _ = upload_text_inputs(s3, tmp_path)
    data = text_config(s3, urls)
    data["inputs"][1]["nonmatch"] = True
    config = write_config(tmp_path, data)
    before = submitted_jobs(cluster)

    result = submit_text(cluster, submit_env, s3, config)

    assert result.returncode == 2
    assert "inputs[1].nonmatch: unknown key" in result.stderr
    assert submitted_jobs(cluster) == before
    assert not s3["fs"].exists(f"{s3['bucket']}/out")


def test_missing_or_wrong_token_is_refused_with_a_clear_message(cluster, s3, tmp_path):
    urls, _ = upload_text_inputs(s3, tmp_path)
    config = write_config(tmp_path, text_config(s3, urls))
    before = submitted_jobs(cluster)
    base = {"RAY_ADDRESS": "", "RAY_AUTH_MODE": "", "RAYMERGE_TEST_S3": s3["endpoint_url"]}

    for token in ("", "not-the-token"):
        result = run_cli(
            "submit", str(config), "--address", cluster.dashboard_url, env={**base, "RAY_AUTH_TOKEN": token}
        )
        assert result.returncode == 1, result.stdout + result.stderr
        assert "refused the request: it uses token authentication" in result.stderr
        assert cluster.env["RAY_AUTH_TOKEN"] not in result.stderr

    assert submitted_jobs(cluster) == before
    assert not s3["fs"].exists(f"{s3['bucket']}/out")


def test_submit_webdataset_join_on_the_cluster_equals_a_local_run(ray_address, cluster, submit_env, s3, tmp_path):
    from raymerge.webdataset import samples

    fs, bucket = s3["fs"], s3["bucket"]
    keys = samples.keys(24)
    samples.write_shards(tmp_path / "images", samples.image_samples(keys), 3)
    samples.write_shards(tmp_path / "captions", samples.caption_samples(samples.shuffled(keys)), 2)
    for name in ("images", "captions"):
        fs.put(str(tmp_path / name), f"{bucket}/in/{name}", recursive=True)
    options = s3["storage_options"]
    config = {
        "kind": "webdataset",
        "operation": "join",
        "inputs": [{"path": f"s3://{bucket}/in/{n}", "storage_options": options} for n in ("images", "captions")],
        "output": {"path": "", "storage_options": options, "maxcount": 10},
    }

    produced, manifest = submit_and_compare(cluster, submit_env, s3, tmp_path, config)

    shards = [name for name in produced if name.endswith(".tar")]
    assert len(shards) == 3  # 24 samples, 10 per shard
    assert manifest["report"]["rows_out"] == 24
    assert len(manifest["report"]["details"]["node_ids"]) == 1


def test_submit_lerobot_merge_on_the_cluster_equals_a_local_run(ray_address, cluster, submit_env, s3, tmp_path):
    lengths = {"a": (6, 5), "b": (4, 7, 3)}
    config = lerobot_merge_on_s3(s3, lengths, "")

    produced, _ = submit_and_compare(cluster, submit_env, s3, tmp_path, config)

    info = json.loads(produced["meta/info.json"])
    assert info["total_episodes"] == 5
    assert info["total_frames"] == sum(sum(v) for v in lengths.values())
    assert any(name.endswith(".mp4") for name in produced)


# What a workstation's shell holds: credentials and client-only settings. None of it may reach the cluster.
CLIENT_SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIACLIENTONLY4F1D8A",
    "AWS_SECRET_ACCESS_KEY": "client-secret-5b8e1f2c9d",
    "AWS_SESSION_TOKEN": "client-session-token-9c2d7e",
    "HF_TOKEN": "hf_client_token_7a41b3",
    "AWS_PROFILE": "client-profile-3e60",
}


def jobs_api(cluster: LocalCluster, path: str = "") -> str:
    """What everyone who can reach the dashboard reads: the jobs API, as raw text."""
    import requests

    headers = {"Authorization": f"Bearer {cluster.env['RAY_AUTH_TOKEN']}"}
    response = requests.get(f"{cluster.dashboard_url}/api/jobs/{path}", headers=headers, timeout=30)
    response.raise_for_status()
    return response.text


def test_submit_from_a_shell_full_of_secrets_runs_with_the_clusters_identity_and_leaves_none_behind(
    cluster, submit_env, s3, tmp_path
):
    urls, expected = upload_text_inputs(s3, tmp_path)
    config = write_config(
        tmp_path,
        {  # no endpoint, no keys: the cluster reaches S3 with its own identity
            "kind": "text",
            "operation": "concat",
            "inputs": [{"path": u} for u in urls],
            "output": {"path": f"s3://{s3['bucket']}/out/merged.jsonl"},
        },
    )

    result = run_cli("submit", str(config), "--address", cluster.dashboard_url, env={**submit_env, **CLIENT_SECRETS})

    assert result.returncode == 0, result.stdout + result.stderr
    assert "raymerge text concat: ok" in result.stdout  # the job's own report, streamed back
    assert read_jsonl(s3, "out/merged.jsonl") == expected
    assert "(environment sent: none)" in result.stderr
    job_id = next(j for j in submitted_jobs(cluster) if j in result.stderr)
    listing = json.loads(jobs_api(cluster))
    job = next(j for j in listing if j["submission_id"] == job_id)
    assert "env_vars" not in (job["runtime_env"] or {})
    report = s3["fs"].cat(f"{s3['bucket']}/out/merged.jsonl.raymerge.json").decode()
    seen = jobs_api(cluster) + jobs_api(cluster, f"{job_id}/logs") + report + result.stdout + result.stderr
    for name, value in CLIENT_SECRETS.items():
        assert value not in seen, f"the value of {name} reached the cluster"
    for value in ("cluster-own-secret", cluster.env["RAY_AUTH_TOKEN"]):
        assert value not in seen  # nor does the cluster's own credential or token show
    assert json.loads(report)["report"]["rows_out"] == len(expected)  # the report stays with the data


def test_a_head_python_without_the_dependencies_fails_with_one_line(cluster, submit_env, s3, tmp_path):
    """A job whose `python` is a Python without raymerge's dependencies (a stock image, a venv not activated)."""
    urls, _ = upload_text_inputs(s3, tmp_path)
    bare = tmp_path / "bare-python"
    bare.mkdir()
    (bare / "python").write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')  # no site-packages
    (bare / "python").chmod(0o755)
    runtime_env = tmp_path / "runtime-env.yaml"
    runtime_env.write_text(yaml.safe_dump({"env_vars": {"PATH": f"{bare}{os.pathsep}{os.environ['PATH']}"}}))
    config = write_config(tmp_path, text_config(s3, urls))

    result = run_cli(
        "submit", str(config), "--address", cluster.dashboard_url, "--runtime-env", str(runtime_env),
        "--env", "RAYMERGE_TEST_S3", env={**submit_env, "RAYMERGE_TEST_S3": s3["endpoint_url"]},
    )  # fmt: skip

    assert result.returncode == 1, result.stdout + result.stderr
    shown = result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("raymerge")]  # Ray's own lines apart
    assert len(lines) == 1, result.stdout
    assert lines[0].startswith("raymerge: error: the cluster's Python") and "fsspec==" in lines[0]
    assert "--with-deps" in lines[0]
    assert "Traceback" not in shown and "ModuleNotFoundError" not in shown
    assert not s3["fs"].exists(f"{s3['bucket']}/out")


def test_run_address_wins_over_ray_address_with_a_warning(cluster, tmp_path):
    from raymerge.text.samples import pairs, write_jsonl

    write_jsonl(tmp_path / "a.jsonl", pairs("a", 5))
    config = write_config(
        tmp_path,
        {
            "kind": "text",
            "operation": "concat",
            "inputs": [{"path": str(tmp_path / "a.jsonl")}],
            "output": {"path": str(tmp_path / "out.jsonl")},
        },
    )
    env = {"RAY_ADDRESS": "127.0.0.1:9", "RAY_AUTH_TOKEN": cluster.env["RAY_AUTH_TOKEN"], "RAY_AUTH_MODE": "token"}

    result = run_cli("run", str(config), "--address", cluster.gcs_address, "--json", "--quiet", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    warning = f"the address {cluster.gcs_address} differs from RAY_ADDRESS=127.0.0.1:9; using {cluster.gcs_address}"
    assert warning in result.stderr
    assert json.loads(result.stdout)["details"]["node_ids"] == cluster.node_ids()  # it ran on the named cluster


# -- a submitted job outlives the client ----------------------------------------------------------------


def text_job(s3: dict, tmp_path: Path) -> Path:
    urls, _ = upload_text_inputs(s3, tmp_path)
    return write_config(
        tmp_path,
        {
            "kind": "text",
            "operation": "concat",
            "inputs": [{"path": u} for u in urls],
            "output": {"path": f"s3://{s3['bucket']}/out/merged.jsonl"},
        },
    )


def job_cli(cluster: LocalCluster, submit_env: dict, *args: str) -> subprocess.CompletedProcess:
    """`raymerge job ARGS --address DASHBOARD`, in this process (the job commands start no Ray)."""
    from click.testing import CliRunner

    from raymerge.cli import main

    argv = ["job", *args, "--address", cluster.dashboard_url]
    result = CliRunner(env=submit_env).invoke(main, argv)
    return subprocess.CompletedProcess(argv, result.exit_code, result.stdout, result.stderr)


def wait_for_log(cluster: LocalCluster, job_id: str, text: str) -> None:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(
        cluster.dashboard_url, headers={"Authorization": f"Bearer {cluster.env['RAY_AUTH_TOKEN']}"}
    )
    deadline = time.monotonic() + WAIT_S
    while text not in client.get_job_logs(job_id):
        assert time.monotonic() < deadline, f"{text!r} never appeared in the log of {job_id}"
        time.sleep(0.2)


def test_no_wait_then_status_logs_list_and_stop(cluster, submit_env, s3, tmp_path, gate):
    config = text_job(s3, tmp_path)
    elsewhere = {**submit_env, "RAY_ADDRESS": "http://127.0.0.1:9"}  # the shell points at another cluster

    submitted = run_cli(
        "submit", str(config), "--address", cluster.dashboard_url, "--no-wait", "--runtime-env", str(gate.runtime_env),
        env=elsewhere,
    )  # fmt: skip

    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert job_id.startswith("raymerge-text-concat-")
    assert f"differs from RAY_ADDRESS=http://127.0.0.1:9; using {cluster.dashboard_url}" in submitted.stderr
    wait_for_log(cluster, job_id, "gate: waiting")

    status = job_cli(cluster, submit_env, "status", job_id)
    assert status.returncode == 0 and f"{job_id}: RUNNING" in status.stdout, status.stdout + status.stderr
    logs = job_cli(cluster, submit_env, "logs", job_id)
    assert logs.returncode == 0 and "gate: waiting" in logs.stdout
    listed = job_cli(cluster, submit_env, "list")
    assert any(line.startswith(job_id) and "RUNNING" in line for line in listed.stdout.splitlines()), listed.stdout

    stopped = job_cli(cluster, submit_env, "stop", job_id)
    assert stopped.returncode == 0 and f"{job_id}: STOPPED" in stopped.stdout, stopped.stdout + stopped.stderr
    assert f"{job_id}: STOPPED" in job_cli(cluster, submit_env, "status", job_id).stdout
    followed = job_cli(cluster, submit_env, "logs", job_id, "--follow")
    assert followed.returncode == 130  # the job's own outcome: stopped
    assert not s3["fs"].exists(f"{s3['bucket']}/out")
    unknown = job_cli(cluster, submit_env, "status", "raymerge-no-such-job")
    assert unknown.returncode == 2 and "no such job" in unknown.stderr


def test_a_log_stream_cut_mid_job_is_re_attached_and_submit_exits_with_the_jobs_code(
    cluster, submit_env, s3, tmp_path, gate
):
    config = text_job(s3, tmp_path)
    s3["fs"].pipe(f"{s3['bucket']}/out/merged.jsonl", b"previous\n")  # so the job ends rejecting it: exit 2
    port = int(cluster.dashboard_url.rsplit(":", 1)[1])
    with CuttingProxy(port) as proxy:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("raymerge")), "submit", str(config), "--address", proxy.endpoint,
             "--runtime-env", str(gate.runtime_env)],
            env={**os.environ, **submit_env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            out, err = Lines(proc.stdout), Lines(proc.stderr)
            out.wait_for("gate: waiting", proc)  # the log stream is live, the job held mid-run
            proxy.down = True  # the port-forward dies: cut what is open, refuse what comes
            assert proxy.cut() >= 1
            err.wait_for("lost the log stream", proc)
            time.sleep(3)  # a few refused re-attach attempts
            proxy.down = False
            gate.open()
            code = proc.wait(timeout=WAIT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        out.join()
        err.join()

    assert code == 2, out.text + err.text  # the job's own exit code, not a failure of the stream
    assert proxy.dropped >= 1
    assert "re-attached to job" in err.text
    assert out.text.count("gate: waiting") == 1  # re-attaching does not repeat the log
    assert "gate: open" in out.text and "already exists" in out.text + err.text
    assert s3["fs"].cat(f"{s3['bucket']}/out/merged.jsonl") == b"previous\n"
