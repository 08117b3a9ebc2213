"""The deploy recipes are checked, not just shipped: they parse, carry what a run needs, and name real commands."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import ray
import yaml

from raymerge.cli import main
from raymerge.families import load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def raymerge_commands(text: str) -> list[list[str]]:
    """Every `raymerge SUB ...` command line in a text (shell lines, YAML comments, entrypoints)."""
    found = []
    for line in text.splitlines():
        for m in re.finditer(r"(?:^|[\s\"'`])raymerge\s+([a-z]+[^\"'`#\n]*)", line):
            found.append(shlex.split(m.group(1)))
    return found


def assert_real_command(args: list[str]) -> None:
    """The subcommand exists and click accepts its arguments and options (a bare `raymerge run` names it only)."""
    sub, *rest = args
    assert sub in main.commands, f"`raymerge {sub}` is not a command of the CLI"
    command = main.commands[sub]
    assert isinstance(command, click.Command)
    if rest:
        command.make_context(sub, list(rest))


def rayjob_docs() -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "rayjob.yaml").read_text())}


def env_secrets(container: dict) -> dict[str, tuple[str, str]]:
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def test_dockerfile_builds_on_the_official_ray_image_of_the_pinned_version():
    text = (DEPLOY / "Dockerfile").read_text()
    image = re.search(r"^ARG RAY_IMAGE=(\S+)", text, re.M).group(1)
    assert image == f"rayproject/ray:{ray.__version__}-py311"
    assert re.search(r"^FROM \$\{RAY_IMAGE\}", text, re.M)
    pinned = re.search(r'"ray\[[^\]]*\]==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert pinned == ray.__version__
    for source in re.findall(r"^COPY (?:--\S+ )*(\S+) ", text, re.M):
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
    assert re.search(r"pip install [^\n]*\.", text), "the image must install raymerge itself"


def test_rayjob_runs_raymerge_on_the_configmap_config_with_secret_credentials():
    docs = rayjob_docs()
    job = docs["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["enableInTreeAutoscaling"] is True

    args = shlex.split(spec["entrypoint"])
    assert args[:2] == ["raymerge", "run"]
    assert_real_command(args[1:])
    config_path = Path(args[2])

    head = cluster["headGroupSpec"]["template"]["spec"]
    head_container = head["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in head_container["volumeMounts"]}
    volumes = {v["name"]: v for v in head["volumes"]}
    mounted = [name for name, path in mounts.items() if Path(path) == config_path.parent]
    assert mounted, f"nothing is mounted at {config_path.parent} on the head"
    configmap = docs["ConfigMap"]
    assert volumes[mounted[0]]["configMap"]["name"] == configmap["metadata"]["name"]
    cfg = load_config(yaml.safe_load(configmap["data"][config_path.name]))
    assert cfg.output.path.startswith("s3://")

    groups = cluster["workerGroupSpecs"]
    assert groups, "no worker group"
    for group in groups:
        assert 0 <= group["minReplicas"] < group["maxReplicas"], "workers must be able to autoscale"
    containers = [head_container] + [g["template"]["spec"]["containers"][0] for g in groups]
    images = {c["image"] for c in containers}
    assert len(images) == 1, f"head and workers must run the same image, got {images}"
    for container in containers:
        secrets = env_secrets(container)
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secrets), container["name"]
        assert {name for name, _ in secrets.values()} == {"raymerge-s3"}


def test_cluster_launcher_yaml_passes_rays_own_schema_and_mounts_a_valid_config():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((DEPLOY / "cluster-aws.yaml").read_text())
    validate_config(prepare_config(config))
    assert config["provider"]["type"] == "aws"
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert workers and all(t["max_workers"] > t.get("min_workers", 0) for t in workers)
    assert (
        config["docker"]["image"]
        == rayjob_docs()["RayJob"]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0][
            "image"
        ]
    )
    for target, source in config["file_mounts"].items():
        assert (ROOT / source).is_file(), f"file_mounts source {source} is missing"
        if target.endswith(".yaml"):
            load_config(ROOT / source)


def code_of(markdown: str) -> str:
    """The fenced blocks and inline code spans of a Markdown text: where its commands are."""
    fenced = re.findall(r"^```[a-z]*\n(.*?)^```", markdown, re.M | re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S))
    return "\n".join(fenced + inline)


@pytest.mark.parametrize("name", ["README.md", "cluster-aws.yaml", "rayjob.yaml"])
def test_every_raymerge_command_in_the_deploy_docs_is_real(name):
    text = (DEPLOY / name).read_text()
    commands = raymerge_commands(code_of(text) if name.endswith(".md") else text)
    assert commands, f"{name} names no raymerge command"
    for args in commands:
        assert_real_command(args)


def test_bogus_command_is_caught():
    with pytest.raises(AssertionError, match="not a command"):
        assert_real_command(["merge-all", "x.yaml"])
    with pytest.raises(click.UsageError):
        assert_real_command(["run", "x.yaml", "--no-such-option"])
