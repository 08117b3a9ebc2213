"""`raymerge submit` against a real Ray cluster on loopback, reading and writing the loopback S3 server.

The cluster's nodes have no storage credentials of their own: a run only succeeds if `submit`
forwards them, the `${VAR}`s its config names and the raymerge package with the job.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

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
    """`raymerge submit` of a text config whose endpoint comes from ${RAYMERGE_TEST_S3}, as a user runs it."""
    env = {**submit_env, "RAYMERGE_TEST_S3": s3["endpoint_url"]}
    return run_cli("submit", str(config), "--address", cluster.dashboard_url, env=env)


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


def test_submit_text_concat_reads_and_writes_s3_on_the_cluster(cluster, submit_env, s3, tmp_path):
    urls, expected = upload_text_inputs(s3, tmp_path)
    config = write_config(tmp_path, text_config(s3, urls))

    result = submit_text(cluster, submit_env, s3, config)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "raymerge text concat: ok" in result.stdout  # the job's own report, streamed back
    assert read_jsonl(s3, "out/merged.jsonl") == expected
    # Forwarded names are shown, never their values.
    assert "RAYMERGE_TEST_S3" in result.stderr and "AWS_SECRET_ACCESS_KEY" in result.stderr
    for secret in (submit_env["RAY_AUTH_TOKEN"], "testing"):
        assert secret not in result.stdout + result.stderr


def test_run_rejected_on_the_cluster_exits_2_and_keeps_the_existing_output(cluster, submit_env, s3, tmp_path):
    urls, _ = upload_text_inputs(s3, tmp_path)
    s3["fs"].pipe(f"{s3['bucket']}/out/merged.jsonl", b"previous\n")
    config = write_config(tmp_path, text_config(s3, urls))

    result = submit_text(cluster, submit_env, s3, config)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "already exists" in result.stdout + result.stderr
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
