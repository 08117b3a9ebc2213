"""The input shards as they travel to writer tasks (`ShardList`): pickled once, decoded only where used."""

from __future__ import annotations

import pickle
import tarfile

import numpy as np
from fsspec.implementations.local import LocalFileSystem

from raymerge.webdataset.sources import Shard, ShardList
from raymerge.webdataset.writer import RangeReader
from tests.webdataset.util import tar_bytes


def _shards(n: int) -> list[Shard]:
    return [
        Shard(i % 2, f"/data/in-{i % 2}/shard-{i:06d}.tar", f"shard-{i:06d}.tar", 10_240 * i, False) for i in range(n)
    ]


def test_a_shard_list_travels_as_one_blob_and_decodes_on_first_use():
    shards = _shards(2000)
    sent = pickle.dumps(ShardList(shards))
    assert len(sent) < len(pickle.dumps(shards)) + 100  # the list's own pickle, once, not a wrapper per shard
    got = pickle.loads(sent)
    assert len(got) == 2000 and got._items is None  # its length without decoding
    assert got[1234] == shards[1234] and list(got) == shards and got[5:7] == shards[5:7]
    assert pickle.loads(pickle.dumps(got))[-1] == shards[-1]  # sent on again as it came


def test_a_reader_decodes_the_shards_only_when_it_reads_a_member(tmp_path):
    path = tmp_path / "in-0" / "shard-000000.tar"
    path.parent.mkdir()
    path.write_bytes(tar_bytes([("a.txt", tarfile.REGTYPE, b"hello")], tarfile.USTAR_FORMAT))
    shards = pickle.loads(pickle.dumps(ShardList([Shard(0, str(path), path.name, path.stat().st_size, False)])))
    reader = RangeReader(shards, [LocalFileSystem()])
    assert shards._items is None  # a writer whose members are all carried stops here
    data = reader.member_bytes(np.array([0]), np.array([512]), np.array([5]))
    assert [bytes(d) for d in data] == [b"hello"] and shards._items is not None
    reader.close()
