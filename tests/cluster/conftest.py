"""One real Ray cluster (`ray start --head` on loopback, token auth on) shared by the cluster tests of this folder.

The cluster starts once per test module and stops when the module's last test has run, also on failure.
Its nodes have an S3 identity of their own for the loopback S3 server, as a real cluster's nodes do.
"""

from __future__ import annotations

import pytest

from tests.cluster.jobtools import Gate, make_gate
from tests.cluster.local_cluster import LocalCluster, local_cluster, s3_identity


@pytest.fixture(scope="module")
def cluster(s3_endpoint) -> LocalCluster:
    with local_cluster(num_cpus=2, identity=s3_identity(s3_endpoint)) as c:
        yield c


@pytest.fixture
def submit_env(cluster: LocalCluster) -> dict[str, str]:
    """What a user at a workstation has: the cluster's token, and nothing pointing at the test's own Ray."""
    return {"RAY_AUTH_TOKEN": cluster.env["RAY_AUTH_TOKEN"], "RAY_ADDRESS": ""}


@pytest.fixture
def gate(tmp_path) -> Gate:
    """A `--runtime-env` file that holds a job's driver until `gate.open()`; opened at the end in any case,
    so a failed test never leaves a job waiting."""
    g = make_gate(tmp_path)
    yield g
    g.open()
