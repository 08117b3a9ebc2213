"""Key tables without a cluster: a key's hash bucket and shuffled position are fixed functions of the key,
the same on every node and with any library version."""

from __future__ import annotations

import zlib

import numpy as np
import polars as pl

from raymerge.transport import unpack
from raymerge.webdataset import samples as S
from raymerge.webdataset.keytable import hash_buckets, range_parts, shuffled_order, split_by

KEYS = ["part_a/000000", "part_b/000001", "a/b", "é/k4", "x" * 200]


def murmur_fmix64(h: int) -> int:
    """MurmurHash3's 64-bit finaliser, in plain Python integers."""
    mask = (1 << 64) - 1
    for multiplier in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
        h = ((h ^ (h >> 33)) * multiplier) & mask
    return h ^ (h >> 33)


def test_bucket_of_a_key_is_fixed():
    assert hash_buckets(pl.Series(KEYS), 64).tolist() == [43, 62, 5, 3, 18]
    assert hash_buckets(pl.Series(KEYS), 7).tolist() == [6, 5, 3, 4, 0]
    assert hash_buckets(pl.Series([], dtype=pl.String), 8).tolist() == []


def test_buckets_are_the_finalised_crc32_of_the_utf8_key():
    keys = [*S.keys(2000), *KEYS, "", "ключ/000001", "鍵/é\u0301", "x" * 5000]
    want = [murmur_fmix64(zlib.crc32(k.encode())) % 13 for k in keys]
    assert hash_buckets(pl.Series(keys), 13).tolist() == want
    assert hash_buckets(pl.Series(keys)[7:2003], 13).tolist() == want[7:2003]  # a slice of a longer column
    assert hash_buckets(pl.concat([pl.Series(keys[:9]), pl.Series(keys[9:])], rechunk=False), 13).tolist() == want


def test_buckets_are_balanced():
    counts = np.bincount(hash_buckets(pl.Series(S.keys(64_000)), 64), minlength=64)
    assert counts.min() > 900 and counts.max() < 1100


def test_shuffled_order_is_fixed():
    assert shuffled_order(KEYS[:3], 3).tolist() == [266838536465226423, 2011825702296072159, 5524164719987805001]
    assert (shuffled_order(S.keys(500), -1) >= 0).all()


def test_split_by_part_keeps_row_order_and_empty_parts():
    df = pl.DataFrame({"key": list("abcdef"), "order": [5, 1, 9, 3, 7, 2]})
    parts = map(unpack, split_by(df, range_parts(df["order"].to_numpy(), [0, 4, 8, 100]), 4))
    assert [p["key"].to_list() for p in parts] == [["b", "d", "f"], ["a", "e"], ["c"], []]


def test_split_by_rows_already_in_part_order_cuts_slices_like_grouping():
    df = pl.DataFrame({"key": [f"k{i}" for i in range(9)], "order": [1, 2, 2, 5, 7, 7, 8, 20, 30]})
    part = range_parts(df["order"].to_numpy(), [0, 2, 6, 8, 25, 40])  # in order: cut as slices
    sliced = [unpack(p) for p in split_by(df, part, 5)]
    grouped = [unpack(p) for p in split_by(df, part[::-1].copy(), 5)]  # the same parts out of order: grouped
    assert [p["key"].to_list() for p in sliced] == [["k0"], ["k1", "k2", "k3"], ["k4", "k5"], ["k6", "k7"], ["k8"]]
    assert [p["key"].to_list() for p in grouped] == [["k8"], ["k5", "k6", "k7"], ["k3", "k4"], ["k1", "k2"], ["k0"]]
