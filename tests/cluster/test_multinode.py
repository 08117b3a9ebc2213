"""Two Ray nodes on one machine, S3 the only storage: the work spreads over both and the output is unchanged."""

from __future__ import annotations

import json

from tests.cluster.local_cluster import local_cluster, s3_identity
from tests.helpers import run_cli


def test_lerobot_merge_on_two_nodes_equals_the_single_node_output(ray_address, s3, tmp_path):
    import yaml

    import raymerge
    from tests.cluster.test_submit_cluster import lerobot_merge_on_s3, tree_bytes

    fs, bucket = s3["fs"], s3["bucket"]
    lengths = {"a": (6, 5, 4, 7), "b": (4, 7, 3, 5)}
    config = lerobot_merge_on_s3(s3, lengths, f"s3://{bucket}/out/two-nodes")
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(config))

    with local_cluster(num_cpus=1, identity=s3_identity(s3["endpoint_url"])) as cluster:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes(2)
        nodes = cluster.node_ids()
        env = {"RAY_AUTH_TOKEN": cluster.env["RAY_AUTH_TOKEN"], "RAY_ADDRESS": ""}
        result = run_cli("submit", str(path), "--address", cluster.dashboard_url, env=env)
    assert result.returncode == 0, result.stdout + result.stderr

    manifest = json.loads(fs.cat(f"{bucket}/out/two-nodes/raymerge.json"))
    assert len(nodes) == 2
    assert manifest["report"]["details"]["node_ids"] == nodes  # tasks ran on both nodes

    raymerge.run({**config, "output": {**config["output"], "path": f"s3://{bucket}/out/one-node"}})
    two = tree_bytes(fs, f"{bucket}/out/two-nodes")
    assert two and two == tree_bytes(fs, f"{bucket}/out/one-node")
