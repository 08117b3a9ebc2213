"""The shared config layer: errors name the key path, env interpolation, --set overrides, redaction."""

from __future__ import annotations

import pytest

from raymerge.config import apply_override, interpolate, key_path, read_yaml, redact
from raymerge.errors import InvalidInput
from raymerge.families import load_config


def test_key_path_formats_lists_and_keys():
    assert key_path(("inputs", 1, "storage_options", "endpoint_url")) == "inputs[1].storage_options.endpoint_url"
    assert key_path(()) == "<config>"


def test_interpolate_replaces_env_and_defaults():
    env = {"BUCKET": "robot-data"}
    out = interpolate({"a": ["s3://${BUCKET}/x", "${MISSING:-fallback}"], "n": 3}, env)
    assert out == {"a": ["s3://robot-data/x", "fallback"], "n": 3}


def test_interpolate_missing_variable_names_key_path():
    with pytest.raises(InvalidInput, match=r"output\.storage_options\.secret: environment variable \$\{S3_SECRET\}"):
        interpolate({"output": {"storage_options": {"secret": "${S3_SECRET}"}}}, {})


def test_apply_override_sets_nested_and_list_items():
    data = {"inputs": [{"path": "a"}, {"path": "b"}], "output": {"path": "o"}}
    apply_override(data, "inputs.1.path=c")
    apply_override(data, "output.overwrite=true")
    apply_override(data, "ray.num_cpus=4")
    assert data["inputs"][1]["path"] == "c"
    assert data["output"]["overwrite"] is True
    assert data["ray"] == {"num_cpus": 4}


@pytest.mark.parametrize(
    ("assignment", "message"),
    [("novalue", "expected KEY.PATH=VALUE"), ("inputs.5.path=x", r"inputs\[5\] is not an item")],
)
def test_apply_override_rejects_bad_assignments(assignment, message):
    with pytest.raises(InvalidInput, match=message):
        apply_override({"inputs": [{"path": "a"}]}, assignment)


def test_yaml_that_is_not_a_mapping_is_rejected(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("- just\n- a list\n")
    with pytest.raises(InvalidInput, match="top level must be a mapping"):
        read_yaml(p)


def test_a_key_given_twice_is_rejected_with_its_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("kind: lerobot\nsplit:\n  episodes:\n    train: '0:2'\n    train: '2:4'\n")
    with pytest.raises(InvalidInput, match=r"key 'train' is given twice[\s\S]*line 5"):
        read_yaml(p)


def test_invalid_yaml_and_missing_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("kind: [unclosed\n")
    with pytest.raises(InvalidInput, match="not valid YAML"):
        read_yaml(p)
    with pytest.raises(InvalidInput, match="file not found"):
        read_yaml(tmp_path / "nope.yaml")


def test_unknown_and_missing_kind_are_named():
    with pytest.raises(InvalidInput, match=r"kind: 'audio' is not known; expected one of: lerobot, text, webdataset"):
        load_config({"kind": "audio", "operation": "x", "inputs": [], "output": {"path": "o"}})
    with pytest.raises(InvalidInput, match="kind: required key is missing"):
        load_config({"operation": "x", "inputs": [], "output": {"path": "o"}})


def test_redact_hides_credentials_but_keeps_the_rest():
    cfg = {
        "inputs": [{"path": "s3://b/x", "storage_options": {"key": "AKIA", "secret": "s", "endpoint_url": "http://h"}}],
        "output": {"path": "o", "storage_options": {"token": "t", "aws_session_token": "z"}},
        "on_duplicate_key": "error",
    }
    out = redact(cfg)
    assert out["inputs"][0]["storage_options"] == {"key": "***", "secret": "***", "endpoint_url": "http://h"}
    assert out["output"]["storage_options"] == {"token": "***", "aws_session_token": "***"}
    assert out["on_duplicate_key"] == "error"
