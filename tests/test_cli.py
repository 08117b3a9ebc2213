"""The command as a user runs it: exit codes and one clear message instead of a traceback."""

from __future__ import annotations

from tests.helpers import run_cli


def test_unknown_kind_exits_2_with_the_key_path(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kind: audio\noperation: concat\ninputs: [{path: a}]\noutput: {path: out}\n")
    res = run_cli("run", str(cfg), cwd=tmp_path)
    assert res.returncode == 2
    assert "kind: 'audio' is not known" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


def test_config_that_is_not_a_mapping_exits_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("just a string\n")
    res = run_cli("plan", str(cfg), cwd=tmp_path)
    assert res.returncode == 2
    assert "the top level must be a mapping" in res.stderr


def test_missing_env_var_is_named(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kind: text\noperation: concat\ninputs: [{path: '${NOT_SET_ANYWHERE}'}]\noutput: {path: out}\n")
    res = run_cli("run", str(cfg), cwd=tmp_path)
    assert res.returncode == 2
    assert "inputs[0].path: environment variable ${NOT_SET_ANYWHERE} is not set" in res.stderr


def test_inspect_of_a_missing_path_exits_2(tmp_path):
    res = run_cli("inspect", str(tmp_path / "nothing-here"))
    assert res.returncode == 2
    assert "no such file or folder" in res.stderr


def test_help_lists_every_command():
    res = run_cli("--help")
    assert res.returncode == 0
    for command in ("run", "plan", "inspect", "preview"):
        assert command in res.stdout
