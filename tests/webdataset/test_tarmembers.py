"""The member listing without a cluster: the direct ustar header parse against `tarfile`, and header fields
that are damaged or not UTF-8."""

from __future__ import annotations

import io
import tarfile

import pytest

from raymerge.errors import InvalidInput
from raymerge.webdataset.tarindex import scan_tar
from raymerge.webdataset.tarmembers import tarfile_members, ustar_members
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
