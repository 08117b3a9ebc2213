"""The member listing without a cluster: the direct ustar header parse (mapped files and files read a window
at a time) against `tarfile`, and header fields that are damaged, unusual or not UTF-8."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from raymerge.errors import InvalidInput
from raymerge.webdataset.tarindex import scan_tar
from raymerge.webdataset.tarmembers import Members, _octal, tarfile_members, ustar_members
from tests.webdataset.util import header_inside, tar_bytes


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_direct_header_scan_equals_tarfile(fmt):
    """Plain ustar headers are parsed directly (prefix-split long names, directories, payloads holding tar
    headers too); PAX/GNU long names fall back to tarfile."""
    names = ["d/", "d/a.seg.png", "d/a.txt", "p" * 90 + "/" + "q" * 90 + ".jpg", "x" * 120 + ".jpg", "b.cls"]
    members = [
        (n, tarfile.DIRTYPE if n.endswith("/") else tarfile.REGTYPE, header_inside() if i == 2 else b"z" * 700 * i)
        for i, n in enumerate(names)
        if fmt != tarfile.USTAR_FORMAT or not n.startswith("x")
    ]
    data = tar_bytes(members, fmt)
    direct = ustar_members(io.BytesIO(data))
    exact, failure = tarfile_members(io.BytesIO(data), "t.tar", False)
    assert failure is None
    if fmt == tarfile.USTAR_FORMAT:
        assert direct is not None and len(direct.names) == 5
        assert direct.names.equals(exact.names)
        assert [direct.is_dir.tolist(), direct.offsets.tolist(), direct.sizes.tolist()] == [
            exact.is_dir.tolist(),
            exact.offsets.tolist(),
            exact.sizes.tolist(),
        ]
    else:
        assert direct is None  # long names need PAX or GNU headers: tarfile reads them
    long_keys = ["p" * 90 + "/" + "q" * 90] + ([] if fmt == tarfile.USTAR_FORMAT else ["x" * 120])
    assert scan_tar(io.BytesIO(data), "t.tar")["key"].to_pylist() == ["d/a", *long_keys, "b"]


def test_size_fields_that_are_not_sizes_fail_cleanly():
    """A negative size field sent the header chain backwards forever; it is refused like damage now."""
    info = tarfile.TarInfo("a.jpg")
    info.size = 512
    header = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    header[124:136] = b"-0000001000\0"
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    data = bytes(header) + bytes(2048)
    with pytest.raises(InvalidInput, match=r"neg.tar: truncated or damaged at byte 0"):
        scan_tar(io.BytesIO(data), "neg.tar", size=len(data))


def test_names_that_are_not_utf8_are_refused():
    header = bytearray(tarfile.TarInfo("x").tobuf(tarfile.USTAR_FORMAT))
    header[:6] = b"caf\xe9.j"
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    data = bytes(header) + bytes(1024)
    with pytest.raises(InvalidInput, match=r"t.tar: member 'caf\\udce9.j' has a name that is not UTF-8"):
        scan_tar(io.BytesIO(data), "t.tar", size=len(data))


def _members(n: int, size: int, *, inside: int | None = None) -> list[tuple[str, bytes, bytes]]:
    """`n` samples of two members (`size` bytes and 3 bytes); sample `inside` holds a tar header in its data."""
    out = []
    for i in range(n):
        data = header_inside() if i == inside else bytes([i % 251]) * size
        out += [(f"k/{i:05d}.bin", tarfile.REGTYPE, data), (f"k/{i:05d}.cls", tarfile.REGTYPE, b"abc")]
    return out


@pytest.mark.parametrize(
    ("samples", "size", "inside", "cut"),  # cut: the archive's length, cut short
    [
        (300, 20, None, 0),  # small members: the blocks after the first headers are looked at all at once
        (300, 20, 200, 0),  # ... and a payload holding a header makes it follow the chain instead
        (300, 20, None, 400_100),  # ... an archive cut short, found by the chain
        (100, 9000, None, 0),  # large members: the chain followed header by header
        (100, 9000, 80, 0),
    ],
)
def test_mapped_scan_equals_tarfile(tmp_path, samples, size, inside, cut):
    data = tar_bytes(_members(samples, size, inside=inside), tarfile.USTAR_FORMAT)
    data = data[:cut] if cut else data
    path = tmp_path / "t.tar"
    path.write_bytes(data)
    with open(path, "rb") as f:
        direct = ustar_members(f)
    exact, failure = tarfile_members(io.BytesIO(data), "t.tar", False)
    if cut:
        assert direct is None and failure is not None
        return
    assert failure is None and direct is not None
    assert direct.names.equals(exact.names)
    assert direct.offsets.tolist() == exact.offsets.tolist() and direct.sizes.tolist() == exact.sizes.tolist()


def _set_field(data: bytes, header: int, start: int, value: bytes) -> bytes:
    """`value` written into a header field, the checksum made right again."""
    out = bytearray(data)
    out[header + start : header + start + len(value)] = value
    out[header + 148 : header + 156] = b" " * 8
    out[header + 148 : header + 156] = b"%06o\0 " % sum(out[header : header + 512])
    return bytes(out)


def _plain(*names: str) -> bytes:
    return tar_bytes([(n, tarfile.REGTYPE, n.encode() * 3) for n in names], tarfile.USTAR_FORMAT)


def _old_style(data: bytes) -> bytes:
    """The type of every header of `DIRS` made old-style (NUL): directories show only by their trailing slash."""
    for at in (0, 512, 1536):  # the second member has a block of data
        data = _set_field(data, at, 156, b"\0")
    return data


def _damaged(data: bytes) -> bytes:
    out = bytearray(data)
    out[1024 + 40] ^= 1  # a byte of the second header, its checksum left as it was
    return bytes(out)


DIRS = [("d/", tarfile.DIRTYPE, b""), ("d/a.txt", tarfile.REGTYPE, b"a"), ("d/e/", tarfile.DIRTYPE, b"")]
CASES: dict[str, tuple[Callable[[], bytes], bool, str | None]] = {  # tar, taken directly, tarfile's failure
    "plain": (lambda: _plain("a.jpg", "a.cls", "b.jpg"), True, None),
    "directories": (lambda: tar_bytes(DIRS, tarfile.USTAR_FORMAT), True, None),
    "prefix field": (lambda: _plain("p" * 120 + "/" + "q" * 60 + ".jpg", "b.cls"), True, None),
    "prefix of a directory": (
        lambda: tar_bytes([("p" * 120 + "/" + "d" * 60 + "/", tarfile.DIRTYPE, b"")], 0),
        True,
        None,
    ),
    "old-style directories": (lambda: _old_style(tar_bytes(DIRS, tarfile.USTAR_FORMAT)), True, None),
    "size with spaces": (lambda: _set_field(_plain("a.jpg", "a.txt"), 0, 124, b"      17 \0\0"), True, None),
    "size with a prefix": (lambda: _set_field(_plain("a.jpg", "a.txt"), 0, 124, b"0o0_21\0"), True, None),
    "payload holding a header": (lambda: tar_bytes([("a.bin", tarfile.REGTYPE, header_inside())], 0), True, None),
    "damaged checksum": (lambda: _damaged(_plain("a.jpg", "a.cls", "b.jpg")), False, "truncated or damaged"),
    "cut in a header": (lambda: _plain("a.jpg", "a.cls")[:1100], False, "truncated or damaged"),
    "cut before the end block": (lambda: _plain("a.jpg", "a.cls")[:2048], False, "truncated or damaged"),
    "empty archive": (lambda: bytes(10240), False, None),
    "negative size": (lambda: _set_field(_plain("a.jpg"), 0, 124, b"-0000000001\0"), False, "truncated"),
    "base-256 size": (lambda: _set_field(_plain("a.jpg"), 0, 124, b"\x80" + bytes(10) + b"\x0b"), False, None),
    "directory with a size": (lambda: _set_field(tar_bytes(DIRS, 0), 0, 124, b"00000001000\0"), False, None),
    "a link": (lambda: tar_bytes([("a.jpg", tarfile.SYMTYPE, b"")], 0), False, "is a link"),
    "name not UTF-8": (lambda: _set_field(_plain("abcd.jpg"), 0, 0, b"caf\xe9"), False, "not UTF-8"),
    "prefix not UTF-8": (lambda: _set_field(_plain("a.jpg"), 0, 345, b"caf\xe9"), False, "not UTF-8"),
    "PAX long name": (
        lambda: tar_bytes([("x" * 120 + ".jpg", tarfile.REGTYPE, b"x")], tarfile.PAX_FORMAT),
        False,
        None,
    ),
    "GNU long name": (
        lambda: tar_bytes([("x" * 120 + ".jpg", tarfile.REGTYPE, b"x")], tarfile.GNU_FORMAT),
        False,
        None,
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_direct_scans_equal_tarfile_or_fall_back(tmp_path: Path, case: str):
    """Mapped and read files give the members tarfile gives, or both leave the shard to tarfile (None), which
    then reads it or words the problem."""
    make, direct, failure = CASES[case]
    data = make()
    path = tmp_path / "t.tar"
    path.write_bytes(data)
    with open(path, "rb") as f:
        mapped = ustar_members(f)
    read = ustar_members(io.BytesIO(data))
    exact, problem = tarfile_members(io.BytesIO(data), "t.tar", False)
    assert problem is None if failure is None else failure in str(problem)
    if not direct:
        assert mapped is None and read is None
        return
    assert mapped is not None and read is not None and len(exact.names)
    for found in (mapped, read):
        assert _listing(found) == _listing(exact)


def _listing(members: Members) -> list[tuple[str, bool, int, int]]:
    columns = (members.is_dir.tolist(), members.offsets.tolist(), members.sizes.tolist())
    return list(zip(members.names.to_pylist(), *columns, strict=True))


@pytest.mark.parametrize(
    "field",
    [
        b"00000001750\0",
        b"00000001750 ",
        b"     1750 \0",
        b"1750\0garbage",
        b"",
        b"\0\0\0",
        b"0o1750",
        b"0O_17",
        b"1_750",
        b"+17",
        b"-0",
        b"-1",
        b"\x0b17\x0c",
        b"17_",
        b"_17",
        b"1__7",
        b"0o",
        b"00o7",
        b"0x17",
        b"18",
        b"1 7",
        b"\x1c17",
        b"\xe917",
        b"\x80" + bytes(11),
        b"\xff" * 12,
    ],
)
def test_number_fields_are_read_as_tarfile_reads_them(field: bytes):
    """Python's `int` over the field up to its NUL, stripped (what tarfile does); negative, base-256 and
    unreadable fields are -1, left to tarfile."""
    padded = field.ljust(12, b"\0")
    try:
        expected = -1 if field[:1] in (b"\x80", b"\xff") else int(padded.split(b"\0")[0].strip() or b"0", 8)
    except ValueError:
        expected = -1
    assert _octal(np.frombuffer(padded, dtype=np.uint8)) == max(expected, -1)
