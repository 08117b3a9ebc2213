"""Staging and commit: nothing looks complete until the commit, a failure leaves the old output."""

from __future__ import annotations

import json
import os

import pytest

from raymerge import storage
from raymerge.errors import InvalidInput
from raymerge.storage import MANIFEST, Staging


def _write(stage: Staging, name: str, text: str) -> None:
    with stage.fs.open(storage.join(stage.path, name), "w") as f:
        f.write(text)


def _scratch(stage: Staging, name: str) -> None:
    """An intermediate file of the run, beside staging: never part of the output."""
    stage.fs.makedirs(stage.scratch, exist_ok=True)
    with stage.fs.open(storage.join(stage.scratch, name), "w") as f:
        f.write("intermediate")


def test_folder_output_appears_only_at_commit(tmp_path):
    target = tmp_path / "out"
    with Staging(str(target)) as stage:
        _write(stage, "a.txt", "hello")
        _scratch(stage, "part-0")
        assert not target.exists()
        assert stage.written_bytes() == 5
        stage.commit({"ok": True})
    assert (target / "a.txt").read_text() == "hello"
    assert json.loads((target / MANIFEST).read_text()) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or lock left behind


def test_failure_removes_staging_and_keeps_previous_output(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("previous")
    with pytest.raises(RuntimeError), Staging(str(target), overwrite=True) as stage:
        _write(stage, "new.txt", "half")
        _scratch(stage, "part-0")
        raise RuntimeError("worker died")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_existing_output_is_refused_without_overwrite(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(InvalidInput, match=r"already exists; set output\.overwrite: true or pass --overwrite"):
        Staging(str(target)).open()
    assert (target / "keep.txt").read_text() == "x"


def test_overwrite_replaces_only_at_commit(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("previous")
    with Staging(str(target), overwrite=True) as stage:
        _write(stage, "new.txt", "fresh")
        assert (target / "old.txt").exists()
        stage.commit(None)
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]


def test_single_file_output(tmp_path):
    target = tmp_path / "merged.jsonl"
    with Staging(str(target), is_file=True) as stage:
        with stage.fs.open(stage.path, "w") as f:
            f.write('{"input": "a", "output": "b"}\n')
        assert not target.exists()
        stage.commit(None)
    assert target.read_text().startswith('{"input"')
    assert [p.name for p in tmp_path.iterdir()] == ["merged.jsonl"]


def test_second_concurrent_run_is_refused(tmp_path):
    target = tmp_path / "out"
    first = Staging(str(target)).open()
    try:
        with pytest.raises(InvalidInput, match="being written by another raymerge run"):
            Staging(str(target)).open()
    finally:
        first.abort()
    Staging(str(target)).open().abort()  # free again once the first run is gone


def test_stale_staging_is_cleaned_and_interrupted_replace_is_restored(tmp_path):
    target = tmp_path / "out"
    # A run killed between moving the old output aside and moving the new one in.
    old = tmp_path / ".out.raymerge-old-20260101T000000-abcdef"
    old.mkdir()
    (old / "data.txt").write_text("precious")
    for kind in ("staging", "scratch"):
        stale = tmp_path / f".out.raymerge-{kind}-20260101T000000-abcdef"
        stale.mkdir()
        (stale / "half.txt").write_text("half")
    stage = Staging(str(target), allow_existing=True).open()
    stage.abort()
    assert (target / "data.txt").read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_s3_folder_commit_writes_manifest_last(s3):
    target = f"s3://{s3['bucket']}/ds/out"
    fs = s3["fs"]
    fs.pipe(f"{s3['bucket']}/ds/out/old.txt", b"old")
    with Staging(target, s3["storage_options"], overwrite=True) as stage:
        _write(stage, "sub/a.txt", "A")
        _scratch(stage, "part-0")
        assert fs.cat(f"{s3['bucket']}/ds/out/old.txt") == b"old"
        stage.commit({"done": 1})
    files = sorted(p.split("/ds/", 1)[1] for p in fs.find(f"{s3['bucket']}/ds", refresh=True) if p)
    assert files == ["out/raymerge.json", "out/sub/a.txt"]
    assert json.loads(fs.cat(f"{s3['bucket']}/ds/out/raymerge.json")) == {"done": 1}


def test_fingerprint_changes_when_an_input_changes(tmp_path):
    (tmp_path / "a.txt").write_text("1")
    fs, path = storage.resolve(str(tmp_path))
    before = storage.fingerprint(fs, path)
    (tmp_path / "a.txt").write_text("22")
    after = storage.fingerprint(fs, path)
    assert before["files"] == after["files"] == 1
    assert after["bytes"] == 2
    assert before["listing_sha256"] != after["listing_sha256"]


def test_unknown_storage_option_is_invalid_input(s3):
    with pytest.raises(InvalidInput, match=r"s3://b/x: cannot open this location: .*'retries'"):
        storage.resolve("s3://b/x", {**s3["storage_options"], "retries": 1})
