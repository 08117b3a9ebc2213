"""The deploy recipes are checked, not just shipped: they pass the real schemas, carry what a run needs, and the
commands deploy/README.md gives are run wherever this machine can run them (deploy/README.md, section 6)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
import ray
import yaml

from raymerge.cli import main
from raymerge.families import load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
RAYJOB_SCHEMA = SCHEMAS / "kuberay-v1.7.0-rayjob.schema.json"


def raymerge_commands(text: str) -> list[list[str]]:
    """Every `raymerge SUB ...` command line in a text (shell lines, YAML comments, entrypoints)."""
    found = []
    for line in text.splitlines():
        for m in re.finditer(r"(?:^|[\s\"'`])raymerge\s+([a-z]+[^\"'`#\n]*)", line):
            found.append(shlex.split(m.group(1)))
    return found


def assert_real_command(args: list[str]) -> None:
    """The (sub)command exists and click accepts its arguments and options (a bare `raymerge run` names it only)."""
    command: click.Command = main
    path = ["raymerge"]
    while isinstance(command, click.Group) and args:
        sub, *args = args
        assert sub in command.commands, f"`{' '.join([*path, sub])}` is not a command of the CLI"
        command, path = command.commands[sub], [*path, sub]
    if args:
        command.make_context(" ".join(path), list(args))


def rayjob() -> dict:
    return yaml.safe_load((DEPLOY / "rayjob.yaml").read_text())


def pods(job: dict) -> dict[str, dict]:
    """Pod specs of the head and of each worker group, by group name."""
    cluster = job["spec"]["rayClusterSpec"]
    found = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    found.update({g["groupName"]: g["template"]["spec"] for g in cluster["workerGroupSpecs"]})
    return found


def gib(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti)?", str(quantity))
    assert m, quantity
    return float(m.group(1)) * units.get(m.group(2) or "", 1) / 2**30


# -- 1. the image ---------------------------------------------------------------------------------------


def test_dockerfile_builds_on_the_pinned_ray_image_with_the_constraints():
    text = (DEPLOY / "Dockerfile").read_text()
    image = re.search(r"^ARG RAY_IMAGE=(\S+)", text, re.M).group(1)
    assert image == f"rayproject/ray:{ray.__version__}-py311"
    assert re.search(r"^FROM \$\{RAY_IMAGE\}", text, re.M)
    pinned = re.search(r'"ray\[[^\]]*\]==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert pinned == ray.__version__
    copies = re.findall(r"^COPY (?:--\S+ )*(.+) (\S+)$", text, re.M)
    for sources, _ in copies:
        for source in sources.split():
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
    assert any("deploy/constraints.txt" in sources for sources, _ in copies)
    assert re.search(r"pip install [^\n]*-c constraints\.txt \.", text), "install raymerge under the constraints"
    assert "pip check" in text


def test_constraints_file_is_generated_from_the_pins_and_current():
    done = subprocess.run([sys.executable, str(DEPLOY / "lock.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    locked = dict(line.split("==") for line in (DEPLOY / "constraints.txt").read_text().splitlines() if "==" in line)
    pyproject = (ROOT / "pyproject.toml").read_text()
    runtime = re.search(r"^dependencies = \[(.*?)^\]", pyproject, re.M | re.S).group(1)
    for name, version in re.findall(r'"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^"]+)"', runtime):
        assert locked.get(name.lower()) == version, f"{name}=={version} is not locked"
    assert "pytest" not in locked and "moto" not in locked  # test tools stay out of the image


# -- 4. the KubeRay RayJob ---------------------------------------------------------------------------------


def test_rayjob_passes_the_kuberay_rayjob_schema_and_typos_would_not():
    import jsonschema

    schema = json.loads(RAYJOB_SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(rayjob())]
    assert errors == []

    typo = rayjob()
    typo["spec"]["shutdownAfterJobFinish"] = typo["spec"].pop("shutdownAfterJobFinishes")
    pods(typo)["spot"]["containers"][0]["resource"] = {}
    pods(typo)["head"]["volumes"][1]["emptyDir"]["sizeLimit"] = "10 GB"
    assert len(list(validator.iter_errors(typo))) == 3


def test_rayjob_runs_a_fresh_named_job_on_its_own_configmap_with_the_clusters_identity():
    job = rayjob()
    assert "name" not in job["metadata"] and job["metadata"]["generateName"] == "raymerge-"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and 0 <= spec["ttlSecondsAfterFinished"] <= 300
    assert 3600 <= spec["activeDeadlineSeconds"] <= 24 * 3600
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["enableInTreeAutoscaling"] is True

    args = shlex.split(spec["entrypoint"])
    assert args[:2] == ["raymerge", "run"]
    assert_real_command(args[1:])
    config_path = Path(args[2])
    head = pods(job)["head"]
    mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in head["volumes"]}
    assert volumes[mounts[str(config_path.parent)]]["configMap"]["name"] == "raymerge-config"
    assert "ConfigMap" not in (DEPLOY / "rayjob.yaml").read_text().split("kind: RayJob")[1]  # apart from the job

    images = set()
    for name, pod in pods(job).items():
        assert pod["serviceAccountName"] == "raymerge", name
        container = pod["containers"][0]
        images.add(container["image"])
        env = container.get("env", [])
        assert not [e for e in env if "secretKeyRef" in e.get("valueFrom", {}) or e["name"].startswith("AWS_")]
    assert len(images) == 1, f"head and workers must run the same image, got {images}"


def test_rayjob_head_is_on_demand_and_sized_for_the_driver_workers_prefer_spot():
    job = rayjob()
    head = pods(job)["head"]
    assert head["nodeSelector"] == {"eks.amazonaws.com/capacityType": "ON_DEMAND"}
    head_group = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head_group["rayStartParams"]["num-cpus"] == "0"
    resources = head["containers"][0]["resources"]
    # docs/scaling.md projects ~6 GB of driver at 1000x LeRobot; Ray's head processes and a 2 GiB object store
    # come on top: 16 GiB, guaranteed (requests == limits).
    assert gib(resources["requests"]["memory"]) >= 16
    assert resources["requests"] == resources["limits"]
    assert int(head_group["rayStartParams"]["object-store-memory"]) <= 2 * 2**30

    groups = {g["groupName"]: g for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]}
    spot, on_demand = groups["spot"], groups["on-demand"]
    assert pods(job)["spot"]["nodeSelector"] == {"eks.amazonaws.com/capacityType": "SPOT"}
    assert pods(job)["on-demand"]["nodeSelector"] == {"eks.amazonaws.com/capacityType": "ON_DEMAND"}
    assert spot["priority"] > on_demand["priority"]
    for group in groups.values():
        assert 0 == group["minReplicas"] < group["maxReplicas"], "workers must be able to autoscale from zero"
    assert spot["maxReplicas"] > on_demand["maxReplicas"]


def test_every_rayjob_pod_keeps_ray_temp_and_scratch_on_size_limited_empty_dirs():
    for name, pod in pods(rayjob()).items():
        container = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        scratch = volumes[mounts[env["TMPDIR"]]]["emptyDir"]
        ray_tmp = volumes[mounts[os.path.join(env["RAY_TMPDIR"], "ray")]]["emptyDir"]
        limits = gib(scratch["sizeLimit"]) + gib(ray_tmp["sizeLimit"])
        requested = gib(container["resources"]["requests"]["ephemeral-storage"])
        assert limits <= requested, f"{name}: the emptyDirs may grow past the pod's ephemeral-storage request"


def test_service_account_carries_the_irsa_role():
    account = yaml.safe_load((DEPLOY / "serviceaccount.yaml").read_text())
    assert (account["apiVersion"], account["kind"]) == ("v1", "ServiceAccount")
    assert account["metadata"]["name"] == pods(rayjob())["head"]["serviceAccountName"]
    role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws:iam::[A-Z0-9_]+:role/raymerge-s3", role)
    assert set(account) == {"apiVersion", "kind", "metadata"}


@pytest.fixture
def stand_in_kubectl(tmp_path: Path) -> tuple[Path, Path]:
    """A `kubectl` that records what it is given and answers as the API server would; `create configmap` is
    the real kubectl's client-side dry run, so the ConfigMap is what kubectl itself would send."""
    real = shutil.which("kubectl")
    if real is None:
        pytest.skip("kubectl is not installed")
    bindir, log = tmp_path / "bin", tmp_path / "kubectl.jsonl"
    bindir.mkdir()
    script = bindir / "kubectl"
    script.write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent(f"""
        import json, subprocess, sys, yaml
        args = sys.argv[1:]
        verb = next(a for a in args if a in ("create", "get", "patch", "delete"))
        record = {{"args": args}}
        out = ""
        if args[args.index(verb):][:2] == ["create", "configmap"]:
            real = subprocess.run([{real!r}, *args, "--dry-run=client", "-o", "yaml"],
                                  capture_output=True, text=True, check=True)
            record["manifest"] = yaml.safe_load(real.stdout)
        elif verb == "create":
            record["manifest"] = yaml.safe_load(sys.stdin.read())
            out = record["manifest"]["metadata"]["generateName"] + "x7k2p"
        elif verb == "get":
            out = "3f1c2a9e-uid"
        with open({str(log)!r}, "a") as f:
            f.write(json.dumps(record) + "\\n")
        if "manifest" in record and record["manifest"]["metadata"].get("labels", {{}}).get("fail"):
            sys.exit(1)  # the API server refuses it
        print(out, end="")
        """)
    )
    script.chmod(0o755)
    return bindir, log


def calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_rayjob_submit_script_creates_a_configmap_per_run_owned_by_a_freshly_named_rayjob(stand_in_kubectl):
    import jsonschema

    bindir, log = stand_in_kubectl
    config = ROOT / "configs" / "cluster" / "text-s3.yaml"
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["sh", str(DEPLOY / "rayjob-submit.sh"), str(config), "-n", "data"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "raymerge-x7k2p"

    made, job, get, patch = calls(log)
    assert all(c["args"][:2] == ["-n", "data"] for c in (made, job, get, patch))
    configmap = made["manifest"]
    name = configmap["metadata"]["name"]
    assert re.fullmatch(r"raymerge-config-\d{8}-\d{6}-[0-9a-f]{6}", name)
    assert configmap["data"]["config.yaml"] == config.read_text()
    manifest = job["manifest"]
    jsonschema.validate(manifest, json.loads(RAYJOB_SCHEMA.read_text()), cls=jsonschema.Draft202012Validator)
    head = pods(manifest)["head"]
    assert [v["configMap"]["name"] for v in head["volumes"] if "configMap" in v] == [name]
    assert manifest == {**rayjob(), "spec": manifest["spec"]}  # only the ConfigMap's name differs
    assert get["args"][2:] == ["get", "rayjob", "raymerge-x7k2p", "-o", "jsonpath={.metadata.uid}"]
    owner = json.loads(patch["args"][patch["args"].index("-p") + 1])["metadata"]["ownerReferences"]
    assert owner == [{"apiVersion": "ray.io/v1", "kind": "RayJob", "name": "raymerge-x7k2p", "uid": "3f1c2a9e-uid"}]


def test_rayjob_submit_script_removes_its_configmap_when_the_rayjob_is_refused(stand_in_kubectl, tmp_path):
    bindir, log = stand_in_kubectl
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    shutil.copy(DEPLOY / "rayjob-submit.sh", deploy)
    refused = (DEPLOY / "rayjob.yaml").read_text().replace("app.kubernetes.io/name: raymerge", "fail: 'yes'")
    (deploy / "rayjob.yaml").write_text(refused)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["sh", str(deploy / "rayjob-submit.sh"), str(ROOT / "configs" / "cluster" / "text-s3.yaml")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and done.stdout == ""
    made, _, removed = calls(log)
    assert removed["args"] == ["delete", "configmap", made["manifest"]["metadata"]["name"]]
    missing = subprocess.run(["sh", str(DEPLOY / "rayjob-submit.sh"), "nope.yaml"], capture_output=True, text=True)
    assert missing.returncode == 2 and "no such file" in missing.stderr


# -- 5. the cluster launcher ---------------------------------------------------------------------------------


def test_cluster_launcher_yaml_passes_rays_own_schema():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((DEPLOY / "cluster-aws.yaml").read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(config))  # Ray's own check, with its defaults filled in


def test_cluster_launcher_has_an_on_demand_head_spot_workers_their_own_profiles_and_token_auth():
    config = yaml.safe_load((DEPLOY / "cluster-aws.yaml").read_text())
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types.pop(config["head_node_type"])
    assert head["resources"] == {"CPU": 0}
    assert "InstanceMarketOptions" not in head["node_config"]
    assert head["node_config"]["IamInstanceProfile"] == {"Name": "raymerge-head"}
    assert types and all(t["max_workers"] > t.get("min_workers", 0) for t in types.values())
    for worker in types.values():
        assert worker["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}
        assert worker["node_config"]["IamInstanceProfile"] == {"Name": "raymerge-worker"}
    assert config["docker"]["image"] == pods(rayjob())["head"]["containers"][0]["image"]

    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    for command in (*config["head_start_ray_commands"], *config["worker_start_ray_commands"]):
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token ray start" in command
    assert config["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    for target, source in config["file_mounts"].items():
        if source.startswith("~"):
            continue  # the user's own token file, made by `ray get-auth-token --generate`
        assert (ROOT / source).is_file(), f"file_mounts source {source} is missing"
        if target.endswith(".yaml"):
            load_config(ROOT / source)


def test_launcher_head_policy_lets_the_autoscaler_start_workers_with_their_role():
    policy = json.loads((DEPLOY / "iam" / "launcher-head.json").read_text())
    actions = {a for s in policy["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert {"ec2:RunInstances", "ec2:TerminateInstances", "ec2:CreateTags", "ec2:DescribeInstances"} <= actions
    passrole = next(s for s in policy["Statement"] if "iam:PassRole" in s["Action"])
    assert any(r.endswith(":role/raymerge-worker") for r in passrole["Resource"])


# -- configs the recipes mount --------------------------------------------------------------------------------


def recipe_configs() -> list[Path]:
    mounted = [
        ROOT / source
        for source in yaml.safe_load((DEPLOY / "cluster-aws.yaml").read_text())["file_mounts"].values()
        if source.endswith(".yaml")
    ]
    readme = (DEPLOY / "README.md").read_text()
    named = [ROOT / p for p in re.findall(r"(configs/\S+?\.yaml)", readme)]
    return sorted(set(mounted + named))


def test_configs_the_recipes_mount_read_and_write_real_s3():
    configs = recipe_configs()
    assert ROOT / "configs" / "cluster" / "text-s3.yaml" in configs
    for path in configs:
        text = path.read_text()
        assert not re.search(r"127\.0\.0\.1|localhost|endpoint_url", text), f"{path} points at a local endpoint"
        cfg = load_config(path, environ={})
        assert all(loc.path.startswith("s3://") for loc in [*cfg.inputs, cfg.output]), path


# -- IAM documents and the README's aws commands, against a local IAM endpoint ----------------------------------


def test_iam_documents_are_accepted_by_iam_and_the_readme_commands_run(s3_endpoint, tmp_path):
    import boto3

    iam = boto3.client("iam", endpoint_url=s3_endpoint, region_name="us-east-1")
    for doc in sorted((DEPLOY / "iam").glob("*.json")):
        text = doc.read_text()
        if "sts:AssumeRole" in text:
            iam.create_role(RoleName=f"check-{doc.stem}", AssumeRolePolicyDocument=text)
        else:
            iam.create_policy(PolicyName=f"check-{doc.stem}", PolicyDocument=text)
    bad = json.loads((DEPLOY / "iam" / "s3-data.json").read_text())
    bad["Statement"][0]["Effect"] = "Permit"
    with pytest.raises(iam.exceptions.MalformedPolicyDocumentException):
        iam.create_policy(PolicyName="check-bad", PolicyDocument=json.dumps(bad))

    aws = shutil.which("aws")
    if aws is None:
        pytest.skip("the aws CLI is not installed: the documents were checked through the API only")
    readme = (DEPLOY / "README.md").read_text()
    blocks = "\n".join(re.findall(r"^```[a-z]*\n(.*?)^```", readme, re.M | re.S))
    commands = [shlex.split(line) for line in blocks.splitlines() if line.startswith("aws iam ")]
    assert len(commands) >= 10
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}
    for args in commands:
        done = subprocess.run(
            [aws, "--endpoint-url", s3_endpoint, *args[1:]], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{shlex.join(args)}: {done.stderr}"


# -- the README ---------------------------------------------------------------------------------------------


def code_of(markdown: str) -> str:
    """The fenced blocks and inline code spans of a Markdown text: where its commands are."""
    fenced = re.findall(r"^```[a-z]*\n(.*?)^```", markdown, re.M | re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S))
    return "\n".join(fenced + inline)


def test_readme_walks_through_the_recipes_in_order():
    headings = re.findall(r"^## (\d)\. ", (DEPLOY / "README.md").read_text(), re.M)
    assert headings == ["1", "2", "3", "4", "5", "6"]
    steps = re.findall(r"^\*\*(\d)\.(\d)", (DEPLOY / "README.md").read_text(), re.M)
    assert steps == sorted(steps, key=lambda s: (int(s[0]), int(s[1])))


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
    with pytest.raises(AssertionError, match="`raymerge job tail` is not a command"):
        assert_real_command(["job", "tail", "x"])
    with pytest.raises(click.UsageError):
        assert_real_command(["run", "x.yaml", "--no-such-option"])
    with pytest.raises(click.UsageError):
        assert_real_command(["job", "logs", "ID", "--no-such-option"])
