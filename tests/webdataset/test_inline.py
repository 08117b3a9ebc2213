"""Tiny members' payload carried in the key tables from the scan to the writers: what is carried, and that the
output is the same bytes whether it is carried or read again from the inputs."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
from fsspec.implementations.local import LocalFileSystem

from raymerge import api
from raymerge.webdataset import inline, plan, tarindex, tarmembers, writer
from raymerge.webdataset import samples as S
from raymerge.webdataset.sources import Shard, scan
from raymerge.webdataset.tasks import ScanOptions, scan_shards
from tests.helpers import tree_digest
from tests.webdataset.util import tar_bytes

RUN_SPECIFIC = ("index.uuid", "raymerge.json")


def written(root: Path) -> dict[str, str]:
    return {n: d for n, d in tree_digest(root).items() if n.rsplit("/", 1)[-1] not in RUN_SPECIFIC}


def test_threshold_is_the_largest_size_whose_members_fit_the_budget():
    sizes = np.array([10, 30, 10, 20, 5000, 20])
    assert inline.threshold(sizes, 60) == 20  # 10+10+20+20 = 60 fits exactly; with the 30s it would be 90
    assert inline.threshold(sizes, 59) == 10
    assert inline.threshold(sizes, 9) == -1
    assert inline.threshold(sizes, 10**9) == 30  # never above MEMBER_MAX, whatever the budget
    assert inline.threshold(np.array([inline.MEMBER_MAX, inline.MEMBER_MAX + 1]), 10**9) == inline.MEMBER_MAX


def test_gather_takes_the_carried_members_and_leaves_the_others_null():
    data = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    got = inline.gather(data, np.array([2, 10, 5, 0]), np.array([3, 4, 0, 1]), np.array([True, False, True, True]))
    assert [None if v is None else bytes(v) for v in got.to_pylist()] == [b"234", None, b"", b"0"]


def _bytes(rows: list[list[list[int] | None]]) -> list[list[bytes | None]]:
    return [[None if v is None else bytes(v) for v in row] for row in rows]


def _shard(path: Path) -> Shard:
    return Shard(0, str(path), path.name, path.stat().st_size, False)


def test_scan_carries_members_up_to_the_threshold_and_a_member_exactly_at_it(tmp_path):
    members = [("a.cls", b"7"), ("a.jpg", b"j" * 600), ("b.cls", b"3"), ("b.jpg", b"k" * 5000)]
    path = tmp_path / "s.tar"
    path.write_bytes(tar_bytes([(n, tarfile.REGTYPE, p) for n, p in members], tarfile.USTAR_FORMAT))
    shard = _shard(path)
    fs = LocalFileSystem()
    budget = int(shard.size * inline.SHARD_SHARE)
    assert budget >= 602  # the two labels and the 600-byte member fit; the 5000-byte one is above MEMBER_MAX
    carried = _bytes(scan_shards([shard], fs, 0, ScanOptions(inline_bytes=10**9))[1]["data"].to_list())
    assert carried == [[b"7", b"j" * 600], [b"3", None]]
    at_threshold = _bytes(scan_shards([shard], fs, 0, ScanOptions(inline_bytes=602))[1]["data"].to_list())
    assert at_threshold == [[b"7", b"j" * 600], [b"3", None]]
    below = _bytes(scan_shards([shard], fs, 0, ScanOptions(inline_bytes=601))[1]["data"].to_list())
    assert below == [[b"7", None], [b"3", None]]
    off = _bytes(scan_shards([shard], fs, 0, ScanOptions())[1]["data"].to_list())
    assert off == [[None, None], [None, None]]


def test_a_shard_whose_members_are_all_carried_gives_its_pages_back(tmp_path, monkeypatch):
    """Nothing reads such a shard again in the run, so the kernel is told its cached pages are not needed;
    a shard with a member left to read by range keeps them for the writer."""
    released: list[str] = []
    real = inline.os.posix_fadvise

    def spy(fd: int, offset: int, length: int, advice: int) -> None:
        if advice == inline.os.POSIX_FADV_DONTNEED:
            released.append(Path(f"/proc/self/fd/{fd}").resolve().name)
        real(fd, offset, length, advice)

    monkeypatch.setattr(inline.os, "posix_fadvise", spy)
    small = tmp_path / "small.tar"
    small.write_bytes(
        tar_bytes([("a.cls", tarfile.REGTYPE, b"7"), ("b.cls", tarfile.REGTYPE, b"3")], tarfile.USTAR_FORMAT)
    )
    mixed = tmp_path / "mixed.tar"
    mixed.write_bytes(
        tar_bytes([("a.cls", tarfile.REGTYPE, b"7"), ("a.jpg", tarfile.REGTYPE, b"j" * 5000)], tarfile.USTAR_FORMAT)
    )
    found = scan_shards([_shard(small), _shard(mixed)], LocalFileSystem(), 0, ScanOptions(inline_bytes=10**9))
    assert _bytes(found[1]["data"].to_list()) == [[b"7"], [b"3"], [b"7", None]]
    assert released == ["small.tar"]


def test_a_plain_shard_is_mapped_once_for_its_headers_and_its_carried_payloads(tmp_path, monkeypatch):
    """The scan and the gather share one mapping, so the shard's pages are touched once; a shard with PAX long
    names (read by tarfile) still carries its payloads from its mapping."""
    opened: list[str] = []
    real = tarmembers.mapped

    def spy(fileobj):
        opened.append(Path(fileobj.name).name)
        return real(fileobj)

    monkeypatch.setattr(tarmembers, "mapped", spy)
    plain, pax = tmp_path / "plain.tar", tmp_path / "pax.tar"
    plain.write_bytes(
        tar_bytes([("a.cls", tarfile.REGTYPE, b"7"), ("b.cls", tarfile.REGTYPE, b"3")], tarfile.USTAR_FORMAT)
    )
    long_key = "deep/" * 22 + "k"
    pax.write_bytes(tar_bytes([(f"{long_key}.txt", tarfile.REGTYPE, b"long")], tarfile.PAX_FORMAT))
    found = scan_shards([_shard(plain), _shard(pax)], LocalFileSystem(), 0, ScanOptions(inline_bytes=10**9))
    assert found[1]["key"].to_list() == ["a", "b", long_key]
    assert _bytes(found[1]["data"].to_list()) == [[b"7"], [b"3"], [b"long"]]
    assert opened.count("plain.tar") == 1


@pytest.mark.parametrize(
    ("members", "budget", "copied"),
    [
        ([("a.cls", b"7"), ("a.txt", b"hi"), ("b.cls", b"3"), ("b.txt", b"")], 10**9, True),
        ([("a.cls", b"7"), ("a.jpg", b"j" * 5000), ("b.cls", b"3")], 10**9, True),  # one member above MEMBER_MAX
        ([("d/", b""), ("d/a.cls", b"7"), ("d/b.cls", b"3")], 10**9, True),  # a folder: no bytes of its own
        ([("__meta__", b"{}"), ("a.cls", b"7"), ("b.cls", b"3")], 10**9, False),  # skipped member with bytes
        ([("a.cls", b"7"), ("a.txt", b"x" * 600), ("b.cls", b"3")], 601, False),  # over the budget: threshold 1
        ([("a.jpg", b"j" * 5000)], 10**9, True),  # nothing small: nothing carried
    ],
)
def test_payloads_copied_during_the_header_scan_are_what_the_gather_takes(tmp_path, members, budget, copied):
    """The header scan copies tiny members' payload as it reads their headers; where it cannot take them all
    (over the budget, a skipped member's bytes among them), the gather after it does, with its threshold."""
    path = tmp_path / "s.tar"
    kinds = [(n, tarfile.DIRTYPE if n.endswith("/") else tarfile.REGTYPE, p) for n, p in members]
    path.write_bytes(tar_bytes(kinds, tarfile.USTAR_FORMAT))
    with open(path, "rb") as f:
        view = tarmembers.mapped(f)
        table = tarindex.scan_tar(view, path.name, size=path.stat().st_size, carry=budget)
        expected = inline.shard_payloads(view, table["offsets"], table["sizes"], budget)
    assert ("data" in table) == copied
    got = table["data"] if copied else inline.shard_payloads(view, table["offsets"], table["sizes"], budget)
    assert (None if got is None else got.to_pylist()) == (None if expected is None else expected.to_pylist())
    scanned = scan(LocalFileSystem(), _shard(path), budget)["data"]
    assert (None if scanned is None else scanned.to_pylist()) == (None if expected is None else expected.to_pylist())


def _long_name_inputs(root: Path) -> dict:
    """A primary with PAX long names, a secondary with GNU long names (both over 100 bytes), small members."""
    keys = [f"{'deep/' * 22}k{i:03d}" for i in range(12)]
    for fmt, name, ext in ((tarfile.PAX_FORMAT, "primary", "txt"), (tarfile.GNU_FORMAT, "secondary", "cls")):
        (root / name).mkdir(parents=True)
        chosen = keys if name == "primary" else keys[::-1][:9]
        members = [(f"{k}.{ext}", tarfile.REGTYPE, f"{ext}-{k[-4:]}".encode()) for k in chosen]
        (root / name / "s-0.tar").write_bytes(tar_bytes(members, fmt))
    return {"primary": root / "primary", "secondary": root / "secondary"}


def _join(inputs: list[dict], out: Path, mode: str) -> dict:
    return {
        "kind": "webdataset",
        "operation": "join",
        "inputs": inputs,
        "output": {"path": str(out), "maxcount": 7},
        "ray": {"executor": mode},
    }


@pytest.mark.parametrize("mode", ["ray", "in-process"])
def test_carrying_on_and_off_write_identical_bytes(ray_address, wds, tmp_path, monkeypatch, mode):
    """The shared inputs (small labels and captions, larger images), long-name inputs (PAX and GNU headers)
    and 6 KB images whose labels are carried (batches of carried and read members): the same files,
    `.tar.idx` and `index.sqlite`, with the members carried or read again."""
    long = _long_name_inputs(tmp_path / "long")
    root = wds["root"]
    S.write_shards(tmp_path / "large", S.image_samples(wds["keys"], 6000), 2)  # a batch of mixed members
    cases = {
        "wds": [{"path": str(root / "images")}, {"path": str(root / "captions"), "nonmatch": "none"}],
        "long": [{"path": str(long["primary"])}, {"path": str(long["secondary"]), "nonmatch": "none"}],
        "large": [{"path": str(tmp_path / "large")}, {"path": str(root / "captions"), "nonmatch": "none"}],
    }
    for name, inputs in cases.items():
        digests = []
        for label, carried in (("on", inline.TASK_BYTES), ("off", 0)):
            monkeypatch.setattr(plan, "INLINE_TASK_BYTES", carried)
            out = tmp_path / f"{name}-{label}"
            assert api.run(_join(inputs, out, mode)).rows_out == (12 if name == "long" else 60)
            digests.append(written(out))
        assert digests[0] == digests[1]
        assert ".nv-meta/index.sqlite" in digests[0]


def test_carried_members_are_not_read_again(wds, tmp_path, monkeypatch):
    """The writers read from the inputs only the members that were not carried."""
    read: list[int] = []
    real = writer.RangeReader.copy_into

    def counting(self, out, dest, src, offset, size):
        read.extend(size.tolist())
        return real(self, out, dest, src, offset, size)

    monkeypatch.setattr(writer.RangeReader, "copy_into", counting)
    root = wds["root"]
    inputs = [{"path": str(root / "images")}, {"path": str(root / "captions"), "nonmatch": "none"}]
    assert api.run(_join(inputs, tmp_path / "all", "in-process")).rows_out == 60
    assert read == []  # every member is small enough and the budgets hold them all
    monkeypatch.setattr(inline, "MEMBER_MAX", 299)
    api.run(_join(inputs, tmp_path / "small", "in-process"))
    assert sorted(set(read)) == [300] and len(read) == 60  # the 300-byte images only
    read.clear()
    monkeypatch.setattr(plan, "INLINE_TASK_BYTES", 0)
    api.run(_join(inputs, tmp_path / "none", "in-process"))
    assert len(read) == 60 * 3 + len([k for k in wds["keys"] if k in wds["captions"]])  # every member
    assert written(tmp_path / "all") == written(tmp_path / "small") == written(tmp_path / "none")


def test_object_storage_inputs_carry_nothing_and_write_the_same(ray_address, s3, wds, tmp_path):
    """Shards on S3 are scanned by range and not carried (their members are fetched by the writers); the
    output is the same as from the local, carried run."""
    fs, bucket = s3["fs"], s3["bucket"]
    root = wds["root"]
    fs.put(f"{root / 'images'}/", f"{bucket}/in/images/", recursive=True)
    fs.put(f"{root / 'captions'}/", f"{bucket}/in/captions/", recursive=True)
    opts = s3["storage_options"]
    remote = [
        {"path": f"s3://{bucket}/in/images", "storage_options": opts},
        {"path": f"s3://{bucket}/in/captions", "storage_options": opts, "nonmatch": "none"},
    ]
    local = [{"path": str(root / "images")}, {"path": str(root / "captions"), "nonmatch": "none"}]
    api.run(_join(remote, tmp_path / "s3", "ray"))
    api.run(_join(local, tmp_path / "local", "ray"))
    assert written(tmp_path / "s3") == written(tmp_path / "local")


def test_a_budget_is_split_over_the_shards_of_a_task():
    assert inline.budget(8000, 10**9, 4) == 1000  # the shard's share
    assert inline.budget(8000, 2000, 4) == 500  # the task's bytes, split
