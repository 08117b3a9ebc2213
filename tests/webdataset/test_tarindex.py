"""The sample table without a cluster: the all-at-once scan against the member-by-member rules it replaces, on
random archives (PAX and GNU names, directories, meta members, payloads that hold tar headers, damage), and
key/extension splitting as Energon does it."""

from __future__ import annotations

import io
import random
import re
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raymerge.errors import InvalidInput
from raymerge.webdataset.tarindex import (
    is_meta,
    is_run_start,
    samples,
    scan_tar,
    split_name,
    split_names,
    summarize,
    unsafe_name,
)
from tests.webdataset.util import header_inside, tar_bytes

ENERGON = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def reference_scan(data: bytes, shard: str, size: int | None) -> list[tuple[str, list[str], list[int], list[int]]]:
    """The rules member by member, as the scan applied them before it went all at once: tarfile's members,
    in order, each checked as it comes."""
    out: list[tuple[str, list[str], list[int], list[int]]] = []
    seen: set[str] = set()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for info in tar:
            if info.issym() or info.islnk():
                raise InvalidInput(f"{shard}: member {info.name!r} is a link; only regular files are allowed")
            if not (info.isreg() or info.isdir()):
                raise InvalidInput(
                    f"{shard}: member {info.name!r} is a device, fifo or other special file; "
                    "only regular files are allowed"
                )
            name = info.name
            reason = unsafe_name(name)
            if reason:
                raise InvalidInput(f"{shard}: member {name!r} {reason}")
            if info.isdir() or is_meta(name):
                continue
            m = ENERGON.match(name)
            if m is None:
                raise InvalidInput(f"{shard}: member {name!r} has no key (expected a name like KEY.EXT)")
            key, ext = m.groups()
            if size is not None and info.offset_data + info.size > size:
                raise InvalidInput(f"{shard}: truncated; member {name!r} ends past the end of the file")
            if not out or key != out[-1][0]:
                if key in seen:
                    raise InvalidInput(
                        f"{shard}: sample key {key!r} appears again after other samples; "
                        "the members of a sample must be adjacent"
                    )
                seen.add(key)
                out.append((key, [], [], []))
            elif ext in out[-1][1]:
                raise InvalidInput(f"{shard}: sample key {key!r} has member {ext!r} twice")
            out[-1][1].append(ext)
            out[-1][2].append(info.offset_data)
            out[-1][3].append(info.size)
        tar.fileobj.seek(tar.offset)
        if tar.fileobj.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
            raise InvalidInput(f"{shard}: truncated or damaged at byte {tar.offset} (no end-of-archive marker there)")
    return out


def outcome(scan, *args) -> object:
    try:
        return scan(*args)
    except InvalidInput as e:
        return str(e)
    except (tarfile.TarError, EOFError, OSError) as e:
        return f"unreadable: {type(e).__name__}"


def scanned(data: bytes, size: int | None) -> list[tuple[str, list[str], list[int], list[int]]]:
    try:
        return list(samples(scan_tar(io.BytesIO(data), "t.tar", size=size)))
    except InvalidInput as e:
        if "not a readable tar file" in str(e):
            raise tarfile.ReadError from None
        raise


KEYS = ["a", "b", "d/k1", "d/k2", "x.y/k3", "p" * 90 + "/" + "q" * 20, "w" * 120, "é/k4", "d/.h"]
EXTS = ["jpg", "txt", "seg.png", "cls", "json", ""]
ODD = ["d/", "d/__meta__.json", "__key__", "README", "../up.jpg", "/abs.jpg", "d/../e.jpg", "..x.jpg", "a.b/c"]


def random_members(rng: random.Random) -> list[tuple[str, bytes, bytes]]:
    """Mostly well-formed samples (adjacent members of a key); some odd names, repeats and reorders."""
    members: list[tuple[str, bytes, bytes]] = []
    for key in rng.sample(KEYS, rng.randint(1, len(KEYS))):
        for ext in rng.sample(EXTS, rng.randint(1, 3)):
            payload = header_inside() if rng.random() < 0.2 else rng.randbytes(rng.choice([0, 1, 511, 512, 513, 2000]))
            members.append((f"{key}.{ext}", tarfile.REGTYPE, payload))
    for _ in range(rng.choice([0, 0, 0, 1, 2])):
        odd = rng.choice(ODD)
        kind = tarfile.DIRTYPE if odd.endswith("/") else tarfile.REGTYPE
        members.insert(rng.randint(0, len(members)), (odd, kind, b"" if kind == tarfile.DIRTYPE else b"m"))
    if rng.random() < 0.15 and len(members) > 2:
        members.append(members[rng.randrange(len(members) - 1)])  # a repeated member or a key seen before
    return members


@pytest.mark.parametrize("seed", range(150))
def test_scan_agrees_with_member_by_member_rules(seed):
    """Same samples, or the same first error, as tarfile read member by member and checked one at a time."""
    rng = random.Random(seed)
    fmt = rng.choice([tarfile.USTAR_FORMAT, tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
    members = random_members(rng)
    if fmt == tarfile.USTAR_FORMAT:  # ustar cannot hold long or non-ASCII names
        members = [m for m in members if len(m[0].encode()) <= 100 or "/" in m[0][-100:]]
    try:
        data = tar_bytes(members, fmt)
    except ValueError:  # a name even the ustar prefix field cannot split
        return
    damage = rng.random()
    if damage < 0.1:
        data = data[: rng.randrange(len(data))]
    elif damage < 0.15:
        at = rng.randrange(len(data))
        data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
    size = len(data)
    assert outcome(scanned, data, size) == outcome(reference_scan, data, "t.tar", size)


def test_scan_reports_data_offsets_of_members(tmp_path: Path):
    data = tar_bytes(
        [("a.jpg", tarfile.REGTYPE, b"x" * 700), ("a.txt", tarfile.REGTYPE, b"hi"), ("b.jpg", tarfile.REGTYPE, b"y")],
        tarfile.USTAR_FORMAT,
    )
    (tmp_path / "t.tar").write_bytes(data)
    expected = [
        ("a", ["jpg", "txt"], [512, 512 + 1024 + 512], [700, 2]),
        ("b", ["jpg"], [512 + 1024 + 1024 + 512], [1]),
    ]
    with open(tmp_path / "t.tar", "rb") as f:  # a real file is mapped, a file object read by windows
        for source in (f, io.BytesIO(data)):
            table = scan_tar(source, "t.tar", size=len(data))
            assert table["key"].to_pylist() == ["a", "b"]
            assert list(samples(table)) == expected
            assert summarize(table) == {
                "samples": 2,
                "bytes": 703,
                "extensions": {"jpg": 2, "txt": 1},
                "first_keys": ["a", "b"],
            }


names_text = st.text(alphabet="ab./_\né-", max_size=14)


@settings(max_examples=400, deadline=None)
@given(st.lists(names_text, max_size=30))
def test_split_names_match_energon_expression(names):
    """Also for a slice of an array (names not at the start of its buffers)."""
    expected = [split_name(n) or (None, None) for n in names]
    for array in (pa.array(names, pa.large_string()), pa.array(["x.y", *names], pa.large_string()).slice(1)):
        keys, exts = split_names(array)
        assert list(zip(keys.to_pylist(), exts.to_pylist(), strict=True)) == expected


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("a/b.seg.png", ("a/b", "seg.png")),
        ("x.y/000123.jpg", ("x.y/000123", "jpg")),
        ("README", None),
        (".hidden", None),
    ],
)
def test_split_name_matches_energon(name, parts):
    assert split_name(name) == parts


def test_runs_of_equal_neighbours():
    values = np.array([3, 3, 1, 1, 1, 3, 2])
    assert np.flatnonzero(is_run_start(values)).tolist() == [0, 2, 5, 6]
    assert is_run_start(values[:0]).tolist() == []
