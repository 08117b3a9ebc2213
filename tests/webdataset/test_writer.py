"""The output writer without a cluster: headers and whole shards byte for byte what `tarfile` writes."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from raymerge.directio import DirectFile, JoinedSink
from raymerge.webdataset import keytable, samples, tarindex
from raymerge.webdataset.sources import Shard
from raymerge.webdataset.writer import RangeReader, _tarfile_header, member_headers, write_shard

NAMES = ["part_a/000001.jpg", "a.b.c", "x" * 100, "x" * 101, "k/" + "y" * 120 + ".jpg", "k/café.jpg", "z.t"]
NAMES += ["k/☃.txt", ""]


def headers(names: list[str], sizes: list[int], mtime: int) -> list[bytes]:
    buf, bounds = member_headers(pa.array(names, pa.large_string()), np.array(sizes, dtype=np.int64), mtime)
    return [buf[a:b] for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)]


@pytest.mark.parametrize("mtime", [0, 1_700_000_000, 8**11 - 1, 8**11, -1])
def test_headers_are_what_tarfile_writes(mtime):
    """Built for all members at once; PAX (via tarfile) only for long or non-ASCII names and huge sizes."""
    rng = random.Random(mtime)
    names = NAMES + ["".join(rng.choice("ab./_-09é") for _ in range(rng.randint(1, 130))) for _ in range(300)]
    sizes = [0, 1, 511, 512, 8**11 - 1, 8**11, 10**12] + [rng.randint(0, 10**7) for _ in range(len(names) - 7)]
    assert headers(names, sizes, mtime) == [_tarfile_header(n, z, mtime) for n, z in zip(names, sizes, strict=True)]
    short = headers(["k/000001.jpg", "k/" + "x" * 120 + ".jpg", "k/café.jpg"], [10, 10, 10], 0)
    assert [len(h) for h in short[:1]] == [512] and all(len(h) > 512 for h in short[1:])


def expected_tar(members: list[tuple[str, bytes]], mtime: int) -> bytes:
    """What tarfile writes for the same members: the writer's contract."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uname, info.gname = len(data), mtime, 0o644, "", ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[list[Shard], list, list[samples.Sample]]:
    """Three inputs with the same member mix: local plain (mapped), local gzip, and object storage (memory)."""
    rng = random.Random(7)
    made, shards, filesystems = [], [], []
    memory = fsspec.filesystem("memory")
    for i, (compressed, remote) in enumerate([(False, False), (True, False), (False, True)]):
        sample_list = [
            (
                f"in{i}/{k:04d}",
                {e: rng.randbytes(rng.choice([0, 1, 511, 512, 513, 3000])) for e in ("jpg", "seg.png", "cls")},
            )
            for k in range(40)
        ]
        name = f"s{i}.tar" + (".gz" if compressed else "")
        path = tmp_path / name
        samples.write_tar(path, sample_list, compressed=compressed)
        if remote:
            memory.pipe(f"/wds/{name}", path.read_bytes())
        shards.append(Shard(i, f"/wds/{name}" if remote else str(path), name, path.stat().st_size, compressed))
        filesystems.append(memory if remote else fsspec.filesystem("file"))
        made += sample_list
    return shards, filesystems, made


@pytest.mark.parametrize(("to_file", "used"), [(True, 3), (False, 3), (True, 1)])
def test_shard_is_byte_for_byte_what_tarfile_writes(tmp_path, inputs, to_file, used):
    """Mapped, decompressed and fetched payload (or only mapped), keys that need PAX, members in extension
    order, to a file (`writev`) or not; the index rows match where tarfile reads the members."""
    shards, filesystems, made = inputs
    frames = []
    for i, shard in enumerate(shards[:used]):
        with filesystems[i].open(shard.path, "rb") as f:
            frames.append(keytable.frame([tarindex.scan_tar(f, shard.name, compressed=shard.compressed, size=None)], i))
    rows = pl.concat(frames).sample(fraction=1.0, shuffle=True, seed=3)
    by_key = dict(made)
    keys = [k if j % 5 else k + ("/é" if j % 2 else "/" + "x" * 110) for j, k in enumerate(rows["key"].to_list())]
    members = [
        (f"{out_key}.{ext}", by_key[key][ext])
        for out_key, key in zip(keys, rows["key"].to_list(), strict=True)
        for ext in sorted(by_key[key])
    ]
    reader = RangeReader(shards, filesystems)
    memory = io.BytesIO()
    with DirectFile(str(tmp_path / "out.tar"), buffer_bytes=64 * 1024) if to_file else JoinedSink(memory) as out:
        offsets, sample_rows, parts = write_shard(rows, reader, out, keys=pl.Series(keys), mtime=1_700_000_000)
        in_memory = memory.getvalue()
    written = (tmp_path / "out.tar").read_bytes() if to_file else in_memory
    reader.close()
    assert written == expected_tar(members, 1_700_000_000)
    with tarfile.open(fileobj=io.BytesIO(written)) as tar:
        infos = tar.getmembers()
    assert parts["content_byte_offset"].to_pylist() == [i.offset_data for i in infos]
    assert parts["content_byte_size"].to_pylist() == [i.size for i in infos]
    firsts = [i.offset for i in infos[::3]]  # three members per sample
    assert offsets[:-1].tolist() == sample_rows["byte_offset"].to_pylist() == firsts
    assert offsets[-1] == infos[-1].offset_data + -(-infos[-1].size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def test_input_changed_since_the_plan_is_reported(tmp_path, inputs):
    shards, filesystems, _ = inputs
    with open(shards[0].path, "rb") as f:
        rows = keytable.frame([tarindex.scan_tar(f, shards[0].name, size=None)], 0)
    Path(shards[0].path).write_bytes(Path(shards[0].path).read_bytes()[:5000])
    reader = RangeReader(shards, filesystems)
    with pytest.raises(OSError, match=r"s0.tar: expected \d+ bytes at \d+, got \d+; did the input change\?"):
        write_shard(rows, reader, JoinedSink(io.BytesIO()), keys=rows["key"], mtime=0)
    reader.close()
