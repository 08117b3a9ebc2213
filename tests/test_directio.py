"""Direct (past the page cache) and buffered local writes give the same bytes, whatever the piece sizes."""

from __future__ import annotations

import errno
import fcntl
import io
import os
import random

import fsspec
import pytest

from raymerge import directio
from raymerge.directio import ALIGN, DirectFile, JoinedSink


def pieces(seed: int) -> list[bytes | memoryview]:
    rng = random.Random(seed)
    out: list[bytes | memoryview] = []
    for _ in range(300):
        n = rng.choice([0, 1, 511, 512, ALIGN - 1, ALIGN, ALIGN + 1, rng.randrange(1, 50_000)])
        data = rng.randbytes(n + 7)
        out.append(memoryview(data)[3 : 3 + n] if rng.random() < 0.5 else data[:n])
    return out


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("buffer_bytes", [ALIGN, 3 * ALIGN, 1 << 20])
def test_any_pieces_come_out_whole_and_in_order(tmp_path, direct, buffer_bytes):
    parts = pieces(buffer_bytes)
    path = tmp_path / "out.bin"
    with DirectFile(str(path), direct=direct, buffer_bytes=buffer_bytes) as out:
        out.write_pieces(parts[:100])
        for p in parts[100:150]:
            assert out.write(p) == len(p)
        out.write_pieces(parts[150:])
    assert path.read_bytes() == b"".join(bytes(p) for p in parts)


def test_a_buffer_filled_exactly_then_more(tmp_path):
    """A piece that ends exactly at the buffer's end, then a larger one."""
    path = tmp_path / "out.bin"
    a, b = b"a" * (2 * ALIGN), b"b" * (5 * ALIGN + 3)
    with DirectFile(str(path), buffer_bytes=2 * ALIGN) as out:
        assert out.direct  # this filesystem takes O_DIRECT, so the aligned path is the one tested
        out.write_pieces([a, b, b""])
    assert path.read_bytes() == a + b


def test_an_empty_file(tmp_path):
    with DirectFile(str(tmp_path / "empty")):
        pass
    assert (tmp_path / "empty").read_bytes() == b""


def test_a_failed_write_closes_the_file_without_writing_more(tmp_path):
    path = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), DirectFile(str(path), buffer_bytes=ALIGN) as out:
        out.write(b"x" * (ALIGN + 10))
        raise RuntimeError("stop")
    assert path.read_bytes() == b"x" * ALIGN  # the buffered tail is abandoned with the file
    out.close()  # closing again is harmless


def test_open_output_is_direct_locally_and_joined_elsewhere(tmp_path):
    local = directio.open_output(fsspec.filesystem("file"), str(tmp_path / "a"))
    remote = directio.open_output(fsspec.filesystem("memory"), "/raymerge-test/a")
    with local, remote:
        local.write_pieces([b"12", b"34"])
        remote.write_pieces([b"12", b"34"])
    assert isinstance(local, DirectFile) and isinstance(remote, JoinedSink)
    assert (tmp_path / "a").read_bytes() == fsspec.filesystem("memory").cat_file("/raymerge-test/a") == b"1234"
    fsspec.filesystem("memory").rm("/raymerge-test/a")


def test_joined_sink_writes_one_joined_piece():
    buf = io.BytesIO()
    sink = JoinedSink(buf)
    sink.write_pieces([b"a", memoryview(b"bc"), b""])
    assert buf.getvalue() == b"abc"


@pytest.mark.parametrize("size", [0, 1, ALIGN, 3 * (1 << 20) + 5])
def test_copy_file_is_byte_exact(tmp_path, size):
    src = tmp_path / "src.bin"
    src.write_bytes(random.Random(size).randbytes(size))
    directio.copy_file(str(src), str(tmp_path / "dst.bin"))
    assert (tmp_path / "dst.bin").read_bytes() == src.read_bytes()


@pytest.mark.parametrize("direct", [True, False])
def test_copy_from_a_file_after_other_pieces(tmp_path, direct):
    src = tmp_path / "src.bin"
    src.write_bytes(random.Random(1).randbytes(5 * ALIGN + 17))
    with open(src, "rb") as r, DirectFile(str(tmp_path / "dst.bin"), direct=direct, buffer_bytes=2 * ALIGN) as out:
        out.write(b"head")
        out.copy_from(r.fileno(), 5 * ALIGN + 17)
    assert (tmp_path / "dst.bin").read_bytes() == b"head" + src.read_bytes()


def test_copy_from_a_source_shorter_than_said(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 100)
    with (
        open(src, "rb") as r,
        pytest.raises(OSError, match="source ended 50 bytes early"),
        DirectFile(str(tmp_path / "dst.bin")) as out,
    ):
        out.copy_from(r.fileno(), 150)


def test_a_device_that_refuses_direct_writes_gets_buffered_ones(tmp_path, monkeypatch):
    """Open with O_DIRECT succeeds but every direct write fails with EINVAL (as on filesystems with a
    larger alignment): the file switches to buffered writes and keeps every byte."""
    real = os.pwrite

    def pwrite(fd, data, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    parts = pieces(7)
    path = tmp_path / "out.bin"
    with DirectFile(str(path), buffer_bytes=3 * ALIGN) as out:
        out.write_pieces(parts)
    assert path.read_bytes() == b"".join(bytes(p) for p in parts)


@pytest.mark.parametrize("direct", [True, False])
def test_batches_laid_out_in_place_mix_with_pieces(tmp_path, direct):
    """`reserve` hands out room after what is written, `commit` writes it; a batch larger than the buffer
    gets a larger one."""
    path = tmp_path / "out.bin"
    expected = []
    with DirectFile(str(path), direct=direct, buffer_bytes=2 * ALIGN) as out:
        for i, n in enumerate([10, ALIGN - 3, 5 * ALIGN + 7, 1, 0, 3 * ALIGN]):
            out.write_pieces([b"p" * i])
            room = out.reserve(n + 4)
            room[: n + 4] = bytes([i % 251 + 1]) * (n + 4)
            out.commit(n)  # the last 4 bytes reserved are not written
            expected += [b"p" * i, bytes([i % 251 + 1]) * n]
    assert path.read_bytes() == b"".join(expected)


def test_joined_sink_writes_what_was_reserved_and_committed():
    buf = io.BytesIO()
    sink = JoinedSink(buf)
    sink.write_pieces([b"ab"])
    room = sink.reserve(4)
    room[:] = b"cdef"
    sink.commit(3)
    assert buf.getvalue() == b"abcde"


def test_the_next_file_reuses_a_closed_files_buffer_but_not_a_failed_ones(tmp_path):
    directio._SPARE.clear()
    first = DirectFile(str(tmp_path / "a"), buffer_bytes=4 * ALIGN)
    assert first.direct  # the test machines' disks take O_DIRECT writes
    buffer = first._buffer
    first.write(b"x" * (5 * ALIGN + 3))
    first.close()
    assert len(directio._SPARE) == 1 and directio._SPARE[0] is buffer
    with DirectFile(str(tmp_path / "b"), buffer_bytes=2 * ALIGN) as other:  # another size: a new buffer
        assert other._buffer is not buffer and len(directio._SPARE) == 1
    with DirectFile(str(tmp_path / "b"), buffer_bytes=4 * ALIGN) as second:
        assert second._buffer is buffer and len(directio._SPARE) == 1  # the other size's, kept too
        second.write(b"y" * 7)
    assert (tmp_path / "a").read_bytes() == b"x" * (5 * ALIGN + 3)
    assert (tmp_path / "b").read_bytes() == b"y" * 7  # nothing of the first file's bytes
    third = DirectFile(str(tmp_path / "c"), buffer_bytes=4 * ALIGN)
    assert third._buffer is buffer
    third.close(flush=False)  # a failed write: its buffer may still be referenced, and is not reused
    assert all(spare is not buffer for spare in directio._SPARE)
