"""Tiny members' payload carried in the key tables, so the writers need not read the inputs a second time.

The header scan of a shard of small members (labels, captions, token ids) touches every page of it
anyway; taking those members' bytes along then costs one gather, while reading them again in the
writers costs a random access per member (a page fault, or an object-storage request) into inputs that
may no longer be in the page cache. Per shard, members up to a threshold chosen from the shard's own
sizes are carried: the largest size at most `MEMBER_MAX` for which the carried bytes stay within the
shard's budget (`budget`). Larger members are still read by range. The bytes written are the same either way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numba
import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from raymerge.webdataset.writer import RangeReader

MEMBER_MAX = 4096  # no member above this is carried: it costs the writers one slice copy, not a request
SHARD_SHARE = 1 / 8  # carried bytes per shard, at most this share of its tar bytes
TASK_BYTES = 64 * 1024 * 1024  # carried bytes per scan task, at most (split evenly over its shards)
PAYLOAD = pa.large_list(pa.uint8())  # one member's carried bytes


def budget(shard_size: int, task_bytes: int, shards: int) -> int:
    """Payload bytes one shard of a scan task of `shards` shards may carry."""
    return int(min(shard_size * SHARD_SHARE, task_bytes // max(1, shards)))


def threshold(sizes: np.ndarray, most: int) -> int:
    """The largest member size s <= `MEMBER_MAX` such that every member of size <= s together holds at most
    `most` bytes; -1 when not even the smallest fits. Members of exactly that size are carried."""
    values, counts = np.unique(sizes[sizes <= MEMBER_MAX], return_counts=True)
    fits = np.flatnonzero(np.cumsum(values * counts) <= most)
    return int(values[fits[-1]]) if len(fits) else -1


def gather(data: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, carried: np.ndarray) -> pa.LargeListArray:
    """Member payloads taken from `data` (a shard's bytes) where `carried`, null elsewhere: one array gather.

    Lists of bytes (`PAYLOAD`), not binary strings: polars keeps binary strings as views into shared
    buffers, and a slice of such a column (one writer's rows) would carry every buffer it points into.
    """
    z = np.where(carried, sizes, 0)
    bounds = np.concatenate([[0], np.cumsum(z)])
    values = np.empty(int(bounds[-1]), dtype=np.uint8)
    _copy_runs(values, bounds[:-1], data, offsets, z)
    return _payload_array(values, bounds, carried)


def _payload_array(values: np.ndarray, bounds: np.ndarray, carried: np.ndarray) -> pa.LargeListArray:
    return pa.LargeListArray.from_arrays(pa.array(bounds), pa.array(values), mask=pa.array(~carried))


def copied_payloads(small: np.ndarray, sizes: np.ndarray) -> pa.LargeListArray | None:
    """`shard_payloads` of a shard whose header scan copied the payload of every member up to `MEMBER_MAX`
    bytes within its budget (`small`, one after the other: `tarmembers.ustar_members` with
    (`MEMBER_MAX`, budget)): then exactly those members are under the threshold, and the bytes are
    taken while each header is in the cache, not gathered in a second pass (~1 ms a shard of 10,000)."""
    carried = sizes <= MEMBER_MAX
    if not carried.any():
        return None
    return _payload_array(small, np.concatenate([[0], np.cumsum(np.where(carried, sizes, 0))]), carried)


@numba.njit(cache=True, nogil=True)
def _copy_runs(out: np.ndarray, dest: np.ndarray, data: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> None:
    """`sizes[i]` bytes from `data` at `starts[i]` to `out` at `dest[i]`, for every i. Compiled: one short
    copy per tiny member, tens of millions of them, where index arrays per byte cost more than the bytes."""
    for i in range(len(dest)):
        out[dest[i] : dest[i] + sizes[i]] = data[starts[i] : starts[i] + sizes[i]]


def shard_payloads(data: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, most: int) -> pa.LargeListArray | None:
    """The carried payloads of a scanned plain shard, taken from `data`, the mapping its headers were just
    read from (its pages are in memory), or None when no member is under the threshold."""
    limit = threshold(sizes, most) if len(sizes) else -1
    return None if limit < 0 else gather(data, offsets, sizes, sizes <= limit)


def release(fd: int, payloads: pa.LargeListArray | None) -> None:
    """Hand a scanned shard's cached pages back to the kernel (`POSIX_FADV_DONTNEED`) when all its members
    are carried, once it is no longer mapped: nothing in the run reads it again. At scale the inputs
    would otherwise fill the page cache, and every page the later steps allocate would first have to
    be reclaimed from it (on the reference machine, a bucket join of 2M keys took 6.3 s with the cache
    full and 1.4 s with memory free)."""
    if payloads is not None and not payloads.null_count and hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def take(lists: pa.Array, rows: np.ndarray) -> pa.LargeListArray:
    """Rows `rows` of a `PAYLOAD` array, or of lists of them (-1: a null row). The bytes move as Arrow binary
    strings (the same buffers): Arrow's take copies lists of bytes element by element, and index arithmetic
    per byte costs more memory than the payload."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    if lists.type == PAYLOAD:
        return _as_payload(_as_binary(lists).take(pa.array(np.maximum(rows, 0), mask=rows < 0)))
    offsets = lists.offsets.to_numpy()
    at = np.maximum(rows, 0)
    null = (rows < 0) | ~lists.is_valid().to_numpy(zero_copy_only=False)[at]
    lengths = np.where(null, 0, (offsets[1:] - offsets[:-1])[at])
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    inner = np.repeat(offsets[:-1][at] - bounds[:-1], lengths) + np.arange(bounds[-1])
    return pa.LargeListArray.from_arrays(pa.array(bounds), take(lists.values, inner), mask=pa.array(null))


def _as_binary(payloads: pa.LargeListArray) -> pa.LargeBinaryArray:
    """The same validity, offsets and bytes seen as binary strings (no copy)."""
    child = payloads.values
    data = child.buffers()[1].slice(child.offset) if len(child) else pa.py_buffer(b"")
    validity, offsets = payloads.buffers()[:2]
    return pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(payloads), [validity, offsets, data], offset=payloads.offset
    )


def _as_payload(binary: pa.LargeBinaryArray) -> pa.LargeListArray:
    """Binary strings seen as `PAYLOAD` lists (no copy)."""
    validity, offsets, data = binary.buffers()
    n = int(np.frombuffer(offsets, dtype=np.int64)[binary.offset + len(binary)]) if len(binary) else 0
    child = pa.Array.from_buffers(pa.uint8(), n, [None, data or pa.py_buffer(b"")])
    return pa.LargeListArray.from_buffers(
        PAYLOAD, len(binary), [validity, offsets], offset=binary.offset, children=[child]
    )


def none_carried(n: int) -> pa.LargeListArray:
    """Payloads of `n` members none of which is carried."""
    return pa.nulls(n, PAYLOAD)


class Carried:
    """The carried payloads of a writer's members (`PAYLOAD`, null where not carried)."""

    def __init__(self, arrow: pa.LargeListArray) -> None:
        self.present = arrow.is_valid().to_numpy(zero_copy_only=False)
        self.starts = arrow.offsets.to_numpy()[:-1]  # into `values`, the whole child array
        self.values = arrow.values.to_numpy()

    def copy_into(self, out: np.ndarray, dest: np.ndarray, members: np.ndarray, sizes: np.ndarray) -> None:
        """The payloads of `members` (carried ones) copied into `out` at `dest`, all at once."""
        _copy_runs(out, dest, self.values, self.starts[members], sizes)

    def payloads(
        self, reader: RangeReader, which: np.ndarray, src: np.ndarray, offset: np.ndarray, size: np.ndarray
    ) -> list[memoryview]:
        """The payloads of members `which`, in that order: carried ones from here, the others read from the
        input shards by range (`reader`)."""
        have = self.present[which]
        if have.all():
            return self.views(which, size[which].tolist())
        rest = which[~have]
        data = reader.member_bytes(src[rest], offset[rest], size[rest])
        if not have.any():
            return data
        out: list[memoryview] = [memoryview(b"")] * len(which)
        for i, piece in zip(np.flatnonzero(~have).tolist(), data, strict=True):
            out[i] = piece
        here = np.flatnonzero(have)
        for i, piece in zip(here.tolist(), self.views(which[here], size[which[here]].tolist()), strict=True):
            out[i] = piece
        return out

    def views(self, members: np.ndarray, sizes: Sequence[int]) -> list[memoryview]:
        """The payloads of `members` (carried ones) as slices of the column's buffer."""
        view = memoryview(self.values)
        return [view[s : s + z] for s, z in zip(self.starts[members].tolist(), sizes, strict=True)]
