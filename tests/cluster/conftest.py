"""One real Ray cluster (`ray start --head` on loopback, token auth on) shared by the submit tests of this folder."""

from __future__ import annotations

import pytest

from tests.cluster.local_cluster import LocalCluster, local_cluster


@pytest.fixture(scope="module")
def cluster() -> LocalCluster:
    with local_cluster(num_cpus=2) as c:
        yield c


@pytest.fixture
def submit_env(cluster: LocalCluster) -> dict[str, str]:
    """What a user at a workstation has: the cluster's token, and nothing pointing at the test's own Ray."""
    return {"RAY_AUTH_TOKEN": cluster.env["RAY_AUTH_TOKEN"], "RAY_ADDRESS": ""}
