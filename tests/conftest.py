"""Shared fixtures: one Ray session for the whole run, one loopback S3 server, temp outputs.

Credentials for the loopback S3 server are set before Ray starts so every worker inherits them.
"""

from __future__ import annotations

import os
import uuid

import pytest

from tests.s3proxy import moto_server

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_address():
    """The test run's single Ray session; its GCS address lets CLI subprocesses attach instead of starting Ray."""
    import ray

    ctx = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True, logging_level="WARNING")
    try:
        yield ctx.address_info["gcs_address"]
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API server (moto's server mode) on 127.0.0.1, stopped when the run ends."""
    with moto_server() as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def s3(s3_endpoint):
    """A fresh bucket per test: its name, the storage options to reach it, and an s3fs filesystem."""
    import s3fs

    bucket = f"t-{uuid.uuid4().hex[:12]}"
    options = {"endpoint_url": s3_endpoint}
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True)
    fs.mkdir(bucket)
    return {"bucket": bucket, "storage_options": options, "fs": fs, "endpoint_url": s3_endpoint}
