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


def test_run_starts_an_embedded_local_ray_when_no_address_is_given(tmp_path):
    """The default path users take: no cluster anywhere, `raymerge run` starts Ray itself and stops it."""
    src = tmp_path / "pairs.jsonl"
    src.write_text('{"prompt": "q1", "completion": "a1"}\n{"prompt": "q2", "completion": "a2"}\n')
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"kind: text\noperation: concat\ninputs: [{{path: {src}}}]\noutput: {{path: {tmp_path / 'out.jsonl'}}}\n"
    )
    res = run_cli("run", str(cfg), "--json", cwd=tmp_path, env={"RAY_ADDRESS": ""})
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out.jsonl").read_text().splitlines() == [
        '{"input":"q1","output":"a1"}',
        '{"input":"q2","output":"a2"}',
    ]
    assert "WARNING" not in res.stderr  # Ray's start-up notices are not shown to users
