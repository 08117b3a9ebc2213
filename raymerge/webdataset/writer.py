"""Write one output shard: gather member bytes by range reads from the input shards, stream a tar and its index.

The member order inside a sample is by extension; every header has the same integer mtime and
uid/gid 0, so a PAX header appears only when a name needs one. Payload is copied, never decoded.
"""

from __future__ import annotations

import gzip
import mmap
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, pairwise

import numba
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from fsspec import AbstractFileSystem

from raymerge import directio, storage
from raymerge.directio import Sink
from raymerge.webdataset import inline, keytable
from raymerge.webdataset.inline import Carried
from raymerge.webdataset.sources import Shard

REMOTE_GAP = 64 * 1024  # object storage: the largest gap read across rather than issuing another request
GAP_SHARE = 1 / 8  # ... and at most this share of the bytes of the two members it lies between
LOCAL_GAP = 4 * 1024  # local: enough to read a run of members across their headers and padding in one go
BATCH_BYTES = directio.BUFFER_BYTES // 2  # tar bytes per batch: laid out in place, it fits beside what is buffered
BATCH_MEMBERS = 65_536  # bounds a batch of tiny members (its per-member arrays), not its bytes
ASSEMBLE_BELOW = 4096  # mean member bytes below which a batch is assembled in one buffer (see write_shard)
SPAN_MAX = 32 * 1024 * 1024  # bound on the bytes one read holds in memory
_UNKNOWN, _NOT_MAPPED = -2, -1  # RangeReader's state of a shard that is not mapped
MAPS_KEPT = 4096  # input shards a worker keeps mapped between tasks
_MAPPED: dict[tuple[str, int, int, int], memoryview] = {}  # (path, inode, size, mtime) -> mapping
END_OF_ARCHIVE = tarfile.NUL * (2 * tarfile.BLOCKSIZE)
# What tarfile writes for a regular file with mode 0644, uid/gid 0, no user/group names; the checksum
# field holds spaces while the sum is taken.
_USTAR_TEMPLATE = bytes(
    bytearray(100)
    + b"0000644\0"
    + b"0000000\0"
    + b"0000000\0"
    + bytes(12)
    + bytes(12)
    + b" " * 8
    + b"0"
    + bytes(100)
    + b"ustar\x0000"
    + bytes(32)
    + bytes(32)
    + bytes(16)
    + bytes(155)
    + bytes(12)
)
_PADS = [tarfile.NUL * n for n in range(tarfile.BLOCKSIZE)]
_OCTAL_LIMIT = 8**11  # what an 11-digit size or mtime field holds; beyond it tarfile writes PAX


def member_headers(names: pa.LargeStringArray, sizes: np.ndarray, mtime: int) -> tuple[bytes, np.ndarray]:
    """The tar headers of members, concatenated, and where each begins (n + 1 bounds).

    Names that fit a ustar header (ASCII, at most 100 bytes) get one built by `fill_ustar`, byte for byte
    what tarfile writes; the rest (long or non-ASCII names, huge sizes) go through tarfile, which adds a
    PAX header.
    """
    fits = ustar_fits(names, sizes, mtime)
    rows = np.empty(len(sizes) * tarfile.BLOCKSIZE, dtype=np.uint8)
    fill_ustar(rows, np.arange(len(sizes), dtype=np.int64) * tarfile.BLOCKSIZE, names, sizes, mtime, pad=False)
    if fits.all():
        return rows.tobytes(), np.arange(len(sizes) + 1, dtype=np.int64) * tarfile.BLOCKSIZE
    blocks = rows.reshape(-1, tarfile.BLOCKSIZE)
    pieces = [
        blocks[i].tobytes() if ok else _tarfile_header(name, size, mtime)
        for i, (ok, name, size) in enumerate(zip(fits.tolist(), names.to_pylist(), sizes.tolist(), strict=True))
    ]
    return b"".join(pieces), np.cumsum([0] + [len(p) for p in pieces], dtype=np.int64)


def ustar_fits(names: pa.LargeStringArray, sizes: np.ndarray, mtime: int) -> np.ndarray:
    """Which members get a plain ustar header (ASCII name of at most 100 bytes, size and mtime in 11 octal
    digits); the others need PAX."""
    lengths = np.diff(_bounds(names))
    fits = (lengths <= 100) & (sizes < _OCTAL_LIMIT) & pc.string_is_ascii(names).to_numpy(zero_copy_only=False)
    return fits & (0 <= mtime < _OCTAL_LIMIT)


def _bounds(names: pa.LargeStringArray) -> np.ndarray:
    return np.frombuffer(names.buffers()[1], dtype=np.int64)[names.offset : names.offset + len(names) + 1]


def fill_ustar(
    out: np.ndarray, starts: np.ndarray, names: pa.LargeStringArray, sizes: np.ndarray, mtime: int, *, pad: bool
) -> None:
    """One 512-byte ustar header per member, written into `out` (flat bytes) at `starts`: straight into a
    shard's output buffer. With `pad`, also the zeros after each member's data up to its next block (the
    data itself is the caller's). Headers of members that do not fit (`ustar_fits`) are not valid: PAX goes
    elsewhere."""
    bounds = _bounds(names)
    data = np.frombuffer(names.buffers()[2], dtype=np.uint8) if bounds[-1] else np.zeros(1, np.uint8)
    template = _template(mtime)
    _fill_headers(out, starts, data, bounds, sizes, template, int(template.sum(dtype=np.int64)), pad)


@numba.njit(cache=True, nogil=True)
def _fill_headers(
    out: np.ndarray,
    starts: np.ndarray,
    name_data: np.ndarray,
    name_bounds: np.ndarray,
    sizes: np.ndarray,
    template: np.ndarray,
    template_sum: int,
    pad: bool,
) -> None:
    """Compiled: at tens of millions of tiny members, building headers with array arithmetic costs more than
    copying their payload. The checksum is the template's byte sum (mtime set, checksum field as spaces)
    plus the bytes of the name and size fields, written as tarfile does ("%06o" NUL space)."""
    block = 512
    for i in range(len(starts)):
        p = starts[i]
        out[p : p + block] = template
        total = template_sum
        a = name_bounds[i]
        for j in range(min(name_bounds[i + 1] - a, 100)):  # longer names do not fit: never used
            c = name_data[a + j]
            out[p + j] = c
            total += c
        size = sizes[i]
        for k in range(11):
            digit = 48 + ((size >> (3 * (10 - k))) & 7)
            out[p + 124 + k] = digit
            total += digit
        for k in range(6):
            out[p + 148 + k] = 48 + ((total >> (3 * (5 - k))) & 7)
        out[p + 154] = 0
        out[p + 155] = 32
        if pad:
            end = p + block + size
            out[end : end + (-size) % block] = 0


def _template(mtime: int) -> np.ndarray:
    row = np.frombuffer(_USTAR_TEMPLATE, dtype=np.uint8).copy()
    row[136:148] = np.frombuffer(b"%011o\0" % (mtime % _OCTAL_LIMIT), dtype=np.uint8)  # unused unless it fits
    return row


def _tarfile_header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


@dataclass(frozen=True)
class ShardMembers:
    """Every member of some rows' samples in tar order (by sample, then by extension inside a sample), as flat
    columns: its sample (row number), extension, source shard, data offset and size, and carried payload
    (`inline.PAYLOAD`, null where not carried)."""

    sample: np.ndarray
    exts: pa.LargeStringArray
    srcs: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    data: pa.LargeListArray


def shard_members(rows: pl.DataFrame) -> ShardMembers:
    """The rows' members (`ShardMembers`), taken from the flat values of their list columns; reordered only
    where a sample's extensions are not in order already (a join appends each input's members, and one
    input's come in its tar order, so mostly they are)."""
    table = rows.select(keytable.MEMBER_COLUMNS).to_arrow(compat_level=pl.CompatLevel.oldest())
    lists = [table.column(c).combine_chunks() for c in keytable.MEMBER_COLUMNS]
    sample = pc.list_parent_indices(lists[0]).to_numpy().astype(np.int64)
    exts, srcs, offsets, sizes, data = (a.flatten() for a in lists)
    order = _extension_order(sample, exts)
    if order is not None:
        at = pa.array(order)
        sample, exts, srcs, offsets, sizes = (
            sample[order],
            exts.take(at),
            srcs.take(at),
            offsets.take(at),
            sizes.take(at),
        )
        data = inline.take(data, order)
    return ShardMembers(
        sample,
        exts.cast(pa.large_string()),
        srcs.to_numpy().astype(np.int64),
        offsets.to_numpy().astype(np.int64, copy=False),
        sizes.to_numpy().astype(np.int64, copy=False),
        data.cast(inline.PAYLOAD),
    )


def _extension_order(sample: np.ndarray, exts: pa.Array) -> np.ndarray | None:
    """The members' order by (sample, extension), extensions compared by their UTF-8 bytes and ties kept in
    tar order; None when they are in it already."""
    if len(sample) < 2:
        return None
    codes = pc.dictionary_encode(exts)
    rank = np.empty(len(codes.dictionary), dtype=np.int64)
    rank[pc.sort_indices(codes.dictionary).to_numpy()] = np.arange(len(rank))
    key = sample * len(rank) + rank[codes.indices.to_numpy()]
    return None if bool((key[1:] >= key[:-1]).all()) else np.argsort(key, kind="stable")


def spans(
    src: np.ndarray, offset: np.ndarray, size: np.ndarray, remote: np.ndarray
) -> list[tuple[int, int, int, np.ndarray]]:
    """Coalesced reads (src, start, end, indices of the members covered), in source order.

    Members are taken in (shard, offset) order, whatever the output order, and neighbours in one shard
    share a read when the gap between them is small: on object storage at most `REMOTE_GAP` and at most
    `GAP_SHARE` of the two members' bytes (so reading across gaps costs at most an eighth more than the
    members themselves, and a shuffled secondary's members are fetched each on its own rather than
    with everything between them); locally at most `LOCAL_GAP` (headers and padding). A read holds at
    most `SPAN_MAX` bytes.
    """
    order = np.lexsort((offset, src))
    s, o, z = src[order], offset[order], size[order]
    e = o + z
    gap = o[1:] - e[:-1]
    neighbours = z[1:] + z[:-1]
    limit = np.where(remote[s[1:]], np.minimum(REMOTE_GAP, neighbours * GAP_SHARE), LOCAL_GAP)
    join = (s[1:] == s[:-1]) & (gap <= limit)
    firsts = np.flatnonzero(np.r_[True, ~join])
    ends = np.r_[firsts[1:], len(order)]
    reach = np.maximum.reduceat(e, firsts) if len(firsts) else e
    out: list[tuple[int, int, int, np.ndarray]] = []
    for a, b, stop in zip(firsts.tolist(), ends.tolist(), reach.tolist(), strict=True):
        if stop - int(o[a]) <= SPAN_MAX:
            out.append((int(s[a]), int(o[a]), stop, order[a:b]))
            continue
        start = a  # a long run: cut where the next member would take the read past SPAN_MAX
        for i in range(a + 1, b + 1):
            if i == b or int(e[i]) - int(o[start]) > SPAN_MAX:
                out.append((int(s[start]), int(o[start]), int(e[start:i].max()), order[start:i]))
                start = i
    return out


class RangeReader:
    """Member bytes of input shards. Local plain shards are mapped into memory, so payload goes from the
    page cache to the output with one copy and no read calls; other shards are read span by span
    (one request per span), compressed ones decompressed forward."""

    def __init__(self, shards: Sequence[Shard], filesystems: Sequence[AbstractFileSystem]) -> None:
        self.shards, self.filesystems = shards, filesystems
        self._local = [storage.is_local(fs) for fs in filesystems]
        self._remote: np.ndarray | None = None  # per shard, once a member is read by span
        self._gz: dict[int, gzip.GzipFile] = {}
        self._maps: dict[int, memoryview] = {}
        self._mapped = np.full(len(shards), _UNKNOWN, dtype=np.int64)  # mapped length, or why not mapped

    def _all_mapped(self, src: np.ndarray, offset: np.ndarray, size: np.ndarray) -> bool:
        """Whether every member's shard is mapped (mapping those not tried yet); a member past the end of its
        mapped shard means the input changed."""
        for s in np.unique(src[self._mapped[src] == _UNKNOWN]).tolist():
            self._map(s)
        if not (self._mapped[src] >= 0).all():
            return False
        short = np.flatnonzero(offset + size > self._mapped[src])
        if len(short):
            i = short[0]
            self._changed(int(src[i]), int(offset[i]), int(size[i]), max(0, int(self._mapped[src[i]] - offset[i])))
        return True

    def copy_into(
        self, out: memoryview, dest: np.ndarray, src: np.ndarray, offset: np.ndarray, size: np.ndarray
    ) -> None:
        """Every member's bytes copied to `out` at `dest`: from the mapped shards straight, one slice copy each."""
        if self._all_mapped(src, offset, size):
            maps = self._maps
            for d, s, o, z in zip(dest.tolist(), src.tolist(), offset.tolist(), size.tolist(), strict=True):
                out[d : d + z] = maps[s][o : o + z]
            return
        for d, piece in zip(dest.tolist(), self.member_bytes(src, offset, size), strict=True):
            out[d : d + len(piece)] = piece

    def member_bytes(self, src: np.ndarray, offset: np.ndarray, size: np.ndarray) -> list[memoryview]:
        """The bytes of every member, in the order given: slices of mapped shards, else read span by span."""
        if self._all_mapped(src, offset, size):
            maps, end = self._maps, offset + size
            return [maps[s][o:e] for s, o, e in zip(src.tolist(), offset.tolist(), end.tolist(), strict=True)]
        data: list[memoryview] = [memoryview(b"")] * len(src)
        offsets, sizes = offset.tolist(), size.tolist()
        if self._remote is None:
            self._remote = np.array([not self._local[shard.input] for shard in self.shards], dtype=bool)
        for s, start, stop, covered in spans(src, offset, size, self._remote):
            buf = self.read(s, start, stop)
            for i in covered.tolist():
                data[i] = buf[offsets[i] - start : offsets[i] - start + sizes[i]]
        return data

    def read(self, src: int, start: int, end: int) -> memoryview:
        """Bytes [start, end) of one input shard, in one request; a short read means the input changed."""
        shard = self.shards[src]
        if self._mapped[src] >= 0:
            data = self._maps[src][start:end]
        elif not shard.compressed:
            data = memoryview(self.filesystems[shard.input].cat_file(shard.path, start=start, end=end))
        else:
            f = self._gz.get(src)
            if f is None:
                f = self._gz[src] = gzip.GzipFile(fileobj=self.filesystems[shard.input].open(shard.path, "rb"))
            f.seek(start)
            data = memoryview(f.read(end - start))
        if len(data) != end - start:
            self._changed(src, start, end - start, len(data))
        return data

    def _map(self, src: int) -> None:
        """Map a local plain shard (the mapping holds no file descriptor open); others stay unmapped.

        Mappings outlive the task in `_MAPPED`: the writers that follow in this worker find the pages
        already mapped instead of mapping, faulting in and unmapping every shard again. A file that
        changed (inode, size or mtime) gets a new mapping.
        """
        shard = self.shards[src]
        self._mapped[src] = _NOT_MAPPED
        if shard.compressed or not self._local[shard.input]:
            return
        try:
            st = os.stat(shard.path)
            key = (shard.path, st.st_ino, st.st_size, st.st_mtime_ns)
            view = _MAPPED.pop(key, None)
            if view is None:
                with open(shard.path, "rb") as f:
                    view = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        except (OSError, ValueError):  # empty or special file, no address space left: read it instead
            return
        _MAPPED[key] = view  # the most recently used last
        while len(_MAPPED) > MAPS_KEPT:
            del _MAPPED[next(iter(_MAPPED))]
        self._maps[src] = view
        self._mapped[src] = len(view)

    def _changed(self, src: int, start: int, expected: int, got: int) -> None:
        raise OSError(
            f"{self.shards[src].name}: expected {expected} bytes at {start}, got {got}; did the input change?"
        )

    def close(self) -> None:
        """Drop this reader's mappings (kept in `_MAPPED` for the next task) and its open files."""
        for f in self._gz.values():
            f.close()
        self._gz.clear()
        self._maps.clear()
        self._mapped[:] = _UNKNOWN


def output_keys(rows: pl.DataFrame, start: int, renumber_width: int | None) -> pl.Series:
    """The keys rows get in the output: their own, or zero-padded positions in the output from `start`
    (a column, no Python string per key)."""
    if renumber_width is None:
        return rows["key"]
    positions = pl.Series("key", np.arange(start, start + rows.height, dtype=np.int64))
    return positions.cast(pl.String).str.zfill(renumber_width)


def member_names(keys: pl.Series, members: ShardMembers) -> pa.LargeStringArray:
    """`KEY.EXT` of every member as one Arrow array: no Python string per member."""
    taken = keys.to_arrow(compat_level=pl.CompatLevel.oldest()).cast(pa.large_string()).take(pa.array(members.sample))
    return pc.binary_join_element_wise(taken, members.exts, pa.scalar(".", pa.large_string()))


def write_shard(
    rows: pl.DataFrame,
    reader: RangeReader,
    out: Sink,
    *,
    keys: pl.Series,
    mtime: int,
) -> tuple[np.ndarray, pa.Table, pa.Table]:
    """Stream the tar to `out`; return the Energon sample offsets (+ end), sample rows and part rows
    (`energon.index_rows`).

    Members go in batches of about `BATCH_BYTES` of tar: payload comes from the key table where carried
    (`inline`), else as slices of mapped shards (or coalesced reads). A batch of small members (labels,
    captions, token ids) is laid out in place in the sink's own buffer (`reserve`): headers and padding
    written there (`fill_ustar`), carried payloads copied in at once, the others one slice copy each;
    handing the sink three pieces per member would cost more than the copy. Other batches go to the
    sink as pieces: headers (PAX where a name needs it), payload slices, padding.
    """
    members = shard_members(rows)
    carried = Carried(members.data)
    sample, src, offset, size = members.sample, members.srcs, members.offsets, members.sizes
    pads = -size % tarfile.BLOCKSIZE
    names = member_names(keys, members)
    header_lens = np.empty(len(size), dtype=np.int64)
    cum = np.concatenate([[0], np.cumsum(tarfile.BLOCKSIZE + size + pads)])  # tar bytes with plain headers
    payload = np.concatenate([[0], np.cumsum(size)])
    b = 0
    while b < len(size):
        e = min(b + BATCH_MEMBERS, max(b + 1, int(np.searchsorted(cum, cum[b] + BATCH_BYTES, side="right")) - 1))
        batch = names.slice(b, e - b)
        fits = ustar_fits(batch, size[b:e], mtime)
        if fits.all() and payload[e] - payload[b] < ASSEMBLE_BELOW * (e - b):
            at = cum[b : e + 1] - cum[b]
            region = out.reserve(int(at[-1]))
            buf = np.frombuffer(region, dtype=np.uint8)
            fill_ustar(buf, at[:-1], batch, size[b:e], mtime, pad=True)
            dest, have = at[:-1] + tarfile.BLOCKSIZE, carried.present[b:e]
            here, rest = np.flatnonzero(have), np.flatnonzero(~have)
            carried.copy_into(buf, dest[here], here + b, size[b:e][here])
            if len(rest):
                reader.copy_into(region, dest[rest], src[b:e][rest], offset[b:e][rest], size[b:e][rest])
            del buf
            header_lens[b:e] = tarfile.BLOCKSIZE
            out.commit(int(at[-1]))
        else:
            headers, bounds = member_headers(batch, size[b:e], mtime)
            header_lens[b:e] = np.diff(bounds)
            data = carried.payloads(reader, np.arange(b, e), src, offset, size)
            out.write_pieces(_interleave(headers, bounds, data, pads[b:e]))
        b = e
    ends = np.cumsum(header_lens + size + pads)
    pos = int(ends[-1]) if len(ends) else 0
    starts = ends - header_lens - size - pads  # where each member's header begins
    out.write_pieces([END_OF_ARCHIVE, tarfile.NUL * (-(pos + len(END_OF_ARCHIVE)) % tarfile.RECORDSIZE)])
    sample_offsets = np.append(starts[np.searchsorted(sample, np.arange(rows.height))], pos).astype("<u8")
    samples = pa.table(
        {
            "sample_key": keys.to_arrow(),
            "byte_offset": sample_offsets[:-1].astype(np.int64),
            "byte_size": np.diff(sample_offsets).astype(np.int64),
        }
    )
    parts = pa.table(
        {
            "sample_index": sample,
            "part_name": members.exts,
            "content_byte_offset": starts + header_lens,
            "content_byte_size": size,
        }
    )
    return sample_offsets, samples, parts


def _interleave(
    headers: bytes, bounds: np.ndarray, data: list[memoryview], pads: np.ndarray
) -> list[bytes | memoryview]:
    """Header, payload and padding of each member, in order, as pieces for one sink call."""
    view, at = memoryview(headers), bounds.tolist()
    heads = [view[a:b] for a, b in pairwise(at)]
    return list(chain.from_iterable(zip(heads, data, [_PADS[p] for p in pads.tolist()], strict=True)))
