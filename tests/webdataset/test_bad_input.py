"""Every rejected input: one clear message naming shard and key, exit before writing, inputs untouched."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from raymerge import api
from raymerge.webdataset import samples as S
from tests.helpers import assert_rejected, run_cli


def raw_tar(path: Path, members: list[tuple[str, bytes] | tarfile.TarInfo]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tar.addfile(info, io.BytesIO(m[1]))


def link(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, "a.jpg"
    return info


def truncated(path: Path) -> None:
    raw_tar(path, [("a.jpg", b"x" * 3000), ("b.jpg", b"y" * 3000)])
    path.write_bytes(path.read_bytes()[: 3584 + 512 + 1000])  # inside b.jpg's data


def cut_header(path: Path) -> None:
    raw_tar(path, [("a.jpg", b"x" * 600), ("b.jpg", b"y" * 600)])
    path.write_bytes(path.read_bytes()[: 1536 + 100])  # inside b.jpg's header


CASES = {
    "non_adjacent": (
        lambda p: raw_tar(p, [("a.jpg", b"1"), ("b.jpg", b"2"), ("a.txt", b"3")]),
        r"bad.tar: sample key 'a' appears again after other samples",
    ),
    "no_key": (lambda p: raw_tar(p, [("a.jpg", b"1"), ("README", b"2")]), r"bad.tar: member 'README' has no key"),
    "traversal": (lambda p: raw_tar(p, [("../evil.jpg", b"1")]), r"bad.tar: member '../evil.jpg' has a name with '..'"),
    "absolute": (
        lambda p: raw_tar(p, [("/etc/evil.jpg", b"1")]),
        r"bad.tar: member '/etc/evil.jpg' has an absolute name",
    ),
    "symlink": (
        lambda p: raw_tar(p, [("a.jpg", b"1"), link("b.jpg", tarfile.SYMTYPE)]),
        r"bad.tar: member 'b.jpg' is a link",
    ),
    "hardlink": (
        lambda p: raw_tar(p, [("a.jpg", b"1"), link("b.jpg", tarfile.LNKTYPE)]),
        r"bad.tar: member 'b.jpg' is a link",
    ),
    "device": (lambda p: raw_tar(p, [link("d.jpg", tarfile.CHRTYPE)]), r"bad.tar: member 'd.jpg' is a device"),
    "truncated_data": (truncated, r"bad.tar: truncated; member 'b.jpg' ends past the end of the file"),
    "truncated_header": (cut_header, r"bad.tar: truncated or damaged at byte 1536"),
    "not_a_tar": (
        lambda p: p.parent.mkdir() or p.write_text("hello, not a tar\n" * 100),
        r"bad.tar: not a readable tar file",
    ),
    "empty": (lambda p: raw_tar(p, []), r"input bad .*has zero samples"),
    "repeated_ext": (
        lambda p: raw_tar(p, [("a.jpg", b"1"), ("a.jpg", b"2")]),
        r"bad.tar: sample key 'a' has member 'jpg' twice",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_shard_is_rejected_before_writing(ray_address, tmp_path, case):
    make, message = CASES[case]
    good = tmp_path / "good"
    S.write_shards(good, S.image_samples(["a", "b"]), 1)
    make(tmp_path / "bad" / "bad.tar")
    cfg = {
        "kind": "webdataset",
        "operation": "concat",
        "inputs": [{"path": str(good)}, {"path": str(tmp_path / "bad"), "name": "bad"}],
        "output": {"path": str(tmp_path / "out")},
        "on_duplicate_key": "prefix",
    }
    assert_rejected(cfg, message, [good, tmp_path / "bad"], tmp_path / "out")


def test_of_several_bad_shards_the_first_in_input_order_is_named(ray_address, tmp_path):
    """Scans finish in any order; the error is the same every run."""
    S.write_shards(tmp_path / "in", S.image_samples([f"k{i}" for i in range(8)]), 4)
    truncated(tmp_path / "in" / "shard-00001.tar")
    (tmp_path / "in" / "shard-00003.tar").write_text("not a tar")
    cfg = {
        "kind": "webdataset",
        "operation": "reshard",
        "inputs": [{"path": str(tmp_path / "in")}],
        "output": {"path": str(tmp_path / "out")},
    }
    assert_rejected(cfg, r"shard-00001.tar: truncated", [tmp_path / "in"], tmp_path / "out")


def test_key_repeated_across_shards(ray_address, tmp_path):
    S.write_tar(tmp_path / "in" / "s0.tar", S.image_samples(["k1", "k2"]))
    S.write_tar(tmp_path / "in" / "s1.tar", S.image_samples(["k3", "k2"]))
    cfg = {
        "kind": "webdataset",
        "operation": "reshard",
        "inputs": [{"path": str(tmp_path / "in")}],
        "output": {"path": str(tmp_path / "out")},
    }
    message = r"inputs in: 1 sample key\(s\) occur more than once .*'k2' in in/s0.tar, in/s1.tar"
    assert_rejected(cfg, message, [tmp_path / "in"], tmp_path / "out")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"output": {"maxcount": 0}}, r"output.maxcount: Input should be greater than 0"),
        ({"inputs": [{"nonmatch": "skip"}]}, r"inputs\[0\].nonmatch: not allowed on the primary"),
        ({"operation": "concat", "inputs": [{"prefix": "x"}]}, r"inputs\[0\].prefix: only used by operation join"),
        ({"output": {"maxsize": -1}}, r"output.maxsize: Input should be greater than 0"),
        ({"output": {"pattern": "shard.tar"}}, r"output.pattern: String should match pattern"),
    ],
)
def test_bad_config(ray_address, wds, out, change, message):
    cfg = {
        "kind": "webdataset",
        "operation": change.get("operation", "join"),
        "inputs": [{"path": str(wds["root"] / "images")}, {"path": str(wds["root"] / "captions"), "nonmatch": "skip"}],
        "output": {"path": str(out), **change.get("output", {})},
    }
    for i, extra in enumerate(change.get("inputs", [])):
        cfg["inputs"][i] = {**cfg["inputs"][i], **extra}
    if cfg["operation"] == "concat":
        cfg["inputs"][1].pop("nonmatch")
    assert_rejected(cfg, message, [wds["root"] / "images", wds["root"] / "captions"], out)


def test_cli_exit_code_2_for_existing_output_and_0_for_plan(ray_address, wds, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"kind: webdataset\noperation: join\ninputs:\n  - path: {wds['root'] / 'images'}\n"
        f"  - path: {wds['root'] / 'captions'}\n    nonmatch: skip\noutput:\n  path: {out}\n"
    )
    r = run_cli("run", str(cfg), "--address", ray_address)
    assert r.returncode == 2, r.stderr
    assert "already exists" in r.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    r = run_cli("plan", str(cfg), "--overwrite", "--address", ray_address, "--json")
    assert r.returncode == 0, r.stderr
    assert '"rows_out": 51' in r.stdout
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    ("operation", "second", "message"),
    [
        ("join", {"path": "{tmp}/missing"}, r"input .*/missing: no such file or folder"),
        ("join", {"path": "{root}/images", "shards": ["gone.tar"]}, r"input shard .*/images/gone.tar: not found"),
        ("concat", {"path": "{root}/captions", "weight": 2}, r"inputs\[1\].weight: only used by operation blend"),
    ],
)
def test_rejected_before_ray_starts(wds, tmp_path, monkeypatch, operation, second, message):
    """Config rules and every input's listing are checked before an executor (and Ray) is started."""

    def no_executor(*args, **kwargs):
        raise AssertionError("an executor was started for a config that check() rejects")

    monkeypatch.setattr(api, "_executor", no_executor)
    second = {**second, "path": second["path"].format(root=wds["root"], tmp=tmp_path)}
    cfg = {
        "kind": "webdataset",
        "operation": operation,
        "inputs": [{"path": str(wds["root"] / "images")}, second],
        "output": {"path": str(tmp_path / "out")},
    }
    assert_rejected(cfg, message, [wds["root"]], tmp_path / "out")


def test_cli_exit_code_2_for_a_missing_input(wds, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"kind: webdataset\noperation: join\ninputs:\n  - path: {wds['root'] / 'images'}\n"
        f"  - path: {tmp_path / 'missing'}\noutput:\n  path: {tmp_path / 'out'}\n"
    )
    r = run_cli("run", str(cfg), "--quiet")
    assert r.returncode == 2, r.stderr
    assert "missing: no such file or folder" in r.stderr
    assert not (tmp_path / "out").exists()
