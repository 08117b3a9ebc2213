"""The mp4 (ISO BMFF) boxes raymerge reads itself: where the `moov` box is, and the sample table of the first
video track (every frame's decode and presentation time, keyframe flag, byte offset and size).

With it a probe knows a file's length and groups of pictures from the `moov` box alone, and a remux knows the
exact byte range of the packets a segment needs, so that object storage is read by range, never whole.
Timestamps follow FFmpeg's mp4 demuxer (its edit-list shift and its shift of negative composition offsets);
`matches` checks that against the index PyAV built, and callers fall back to demuxing when it disagrees.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

# Bytes read per step of the walk over the top-level boxes: ftyp, free and the mdat header fit in the first.
HEAD_BYTES = 64
# A rest of the file this small, after the media data, is read whole: it is the `moov` box (one request).
TAIL_BYTES = 4 * 1024 * 1024
# Boxes whose children are boxes, on the way to the sample table.
_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}


@dataclass(frozen=True)
class Samples:
    """The first video track's samples in decode order, in ticks of `timescale` (FFmpeg's timestamps)."""

    timescale: int
    dts: np.ndarray  # int64
    pts: np.ndarray  # int64
    key: np.ndarray  # bool
    pos: np.ndarray  # int64 byte offset in the file
    size: np.ndarray  # int64
    stts: np.ndarray  # (entries, 2): sample count, sample duration, as stored

    def __len__(self) -> int:
        return len(self.dts)

    @property
    def frame_ticks(self) -> int:
        """The most common sample duration: one frame, in ticks."""
        return int(self.stts[np.argmax(self.stts[:, 0]), 1])

    def matches(self, dts: list[int]) -> bool:
        """Whether these decode times are the ones FFmpeg indexed (so the presentation times are too)."""
        return len(dts) == len(self.dts) and bool(np.array_equal(np.asarray(dts, dtype=np.int64), self.dts))


def _header(data: bytes, at: int) -> tuple[bytes, int, int] | None:
    """(type, header length, box size; 0 = to the end) of the box header at `at`, None if cut short."""
    if at + 8 > len(data):
        return None
    size, kind = struct.unpack_from(">I4s", data, at)
    if size == 1:
        if at + 16 > len(data):
            return None
        return kind, 16, struct.unpack_from(">Q", data, at + 8)[0]
    return kind, 8, size


def locate_moov(read: Callable[[int, int], bytes], size: int) -> tuple[int, int, bytes, bytes] | None:
    """The `moov` box's [start, end) from a walk over the top-level box headers (`mdat` is skipped, not read),
    the file's first bytes read on the way, and the box itself; None when the file has no `moov`. Two
    requests for a file written by FFmpeg: its first bytes, and the rest after the media data."""
    head = read(0, min(HEAD_BYTES, size))
    window, base, at = head, 0, 0
    while at < size:
        found = _header(window, at - base)
        if found is None:
            step = size - at if size - at <= TAIL_BYTES else HEAD_BYTES
            window, base = read(at, min(at + step, size)), at
            found = _header(window, 0)
            if found is None:
                return None
        kind, header, length = found
        end = size if length == 0 else at + length
        if length and length < header:
            return None
        if kind == b"moov":
            moov = window[at - base : end - base] if base <= at and end - base <= len(window) else read(at, end)
            return at, min(end, size), head, moov
        at = end
    return None


def children(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the boxes in data[start:end]."""
    end = len(data) if end is None else end
    at = start
    while at + 8 <= end:
        found = _header(data, at)
        if found is None:
            return
        kind, header, length = found
        box_end = end if length == 0 else at + length
        if box_end > end or box_end < at + header:
            return
        yield kind, at + header, box_end
        at = box_end


def _find(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    return next(((s, e) for k, s, e in children(data, start, end) if k == kind), None)


def video_track(moov: bytes) -> dict[bytes, tuple[int, int]] | None:
    """The payload spans of the first video track's boxes (`mdhd`, `elst`, `stts`, `stsz`, ...) in `moov`."""
    for kind, start, end in children(moov, 8 if moov[4:8] == b"moov" else 0):
        if kind != b"trak":
            continue
        boxes: dict[bytes, tuple[int, int]] = {}
        _collect(moov, start, end, boxes)
        hdlr = boxes.get(b"hdlr")
        if hdlr and moov[hdlr[0] + 8 : hdlr[0] + 12] == b"vide":
            return boxes
    return None


def _collect(data: bytes, start: int, end: int, out: dict[bytes, tuple[int, int]]) -> None:
    for kind, s, e in children(data, start, end):
        out.setdefault(kind, (s, e))
        if kind in _CONTAINERS:
            _collect(data, s, e, out)


def _table(data: bytes, span: tuple[int, int] | None, fields: str, skip: int = 0) -> np.ndarray:
    """A full box's entries (after version/flags, `skip` more bytes and the entry count) as an int array."""
    if span is None:
        return np.zeros((0, len(fields)), dtype=np.int64)
    start = span[0] + 4 + skip
    (count,) = struct.unpack_from(">I", data, start)
    dtype = np.dtype([(f"f{i}", ">" + c) for i, c in enumerate(fields)])
    rows = np.frombuffer(data, dtype=dtype, count=count, offset=start + 4)
    return np.stack([rows[name].astype(np.int64) for name in dtype.names or ()], axis=1)


def _version(data: bytes, span: tuple[int, int] | None) -> int:
    return data[span[0]] if span else 0


def stts_of(moov: bytes) -> np.ndarray:
    """The first video track's `stts` entries (sample count, duration): how long each sample lasts."""
    track = video_track(moov)
    return _table(moov, track.get(b"stts") if track else None, "II")


def samples(moov: bytes, movie_timescale: int | None = None) -> Samples | None:
    """The first video track's sample table, or None when there is none (no video, fragmented file)."""
    track = video_track(moov)
    if track is None or b"stts" not in track or b"stsz" not in track or b"stsc" not in track:
        return None
    mdhd = track[b"mdhd"]
    timescale = struct.unpack_from(">I", moov, mdhd[0] + (20 if _version(moov, mdhd) else 12))[0]
    stts = _table(moov, track[b"stts"], "II")
    durations = np.repeat(stts[:, 1], stts[:, 0])
    n = len(durations)
    if not n:
        return None
    dts = np.concatenate([[0], np.cumsum(durations[:-1])]).astype(np.int64)
    ctts_span = track.get(b"ctts")
    offsets = np.zeros(n, dtype=np.int64)
    if ctts_span:
        ctts = _table(moov, ctts_span, "Ii")
        offsets = np.repeat(ctts[:, 1], ctts[:, 0])[:n]
    shift = max(0, -int(offsets.min())) if len(offsets) else 0
    sizes = _sample_sizes(moov, track[b"stsz"], n)
    pos = _sample_offsets(moov, track, sizes)
    if pos is None or len(sizes) != n:
        return None
    key = np.ones(n, dtype=bool)
    if b"stss" in track:
        key[:] = False
        key[_table(moov, track[b"stss"], "I")[:, 0] - 1] = True
    start = _edit_start(moov, track.get(b"elst"), timescale, _movie_timescale(moov, movie_timescale))
    if start is None:
        return None
    dts = dts - start - shift
    return Samples(timescale, dts, dts + offsets + shift, key, pos, sizes, stts)


def _movie_timescale(moov: bytes, given: int | None) -> int:
    if given:
        return given
    mvhd = _find(moov, 8, len(moov), b"mvhd")
    if mvhd is None:
        return 1
    return struct.unpack_from(">I", moov, mvhd[0] + (20 if moov[mvhd[0]] else 12))[0]


def _edit_start(moov: bytes, elst: tuple[int, int] | None, timescale: int, movie_timescale: int) -> int | None:
    """How far FFmpeg shifts the track's timestamps back for its edit list: the media time where the one
    played edit starts, less any empty edit before it; None for an edit list this reader does not model."""
    if elst is None:
        return 0
    entries = _table(moov, elst, "QqI" if _version(moov, elst) else "IiI")
    empty = 0
    played = [e for e in entries.tolist() if e[1] != -1]
    for duration, media_time, _ in entries.tolist():
        if media_time != -1:
            break
        empty += duration * timescale // movie_timescale
    if len(played) != 1:
        return 0 if not len(entries) else None
    return int(played[0][1]) - empty


def _sample_sizes(moov: bytes, stsz: tuple[int, int], n: int) -> np.ndarray:
    fixed, count = struct.unpack_from(">II", moov, stsz[0] + 4)
    if fixed:
        return np.full(count, fixed, dtype=np.int64)
    return np.frombuffer(moov, dtype=">u4", count=count, offset=stsz[0] + 12).astype(np.int64)


def _sample_offsets(moov: bytes, track: dict[bytes, tuple[int, int]], sizes: np.ndarray) -> np.ndarray | None:
    """Each sample's byte offset: chunk offsets (`stco`/`co64`) plus the sizes before it in its chunk (`stsc`)."""
    if b"co64" in track:
        chunks = _table(moov, track[b"co64"], "Q")[:, 0]
    elif b"stco" in track:
        chunks = _table(moov, track[b"stco"], "I")[:, 0]
    else:
        return None
    stsc = _table(moov, track[b"stsc"], "III")
    if not len(stsc) or not len(chunks):
        return None
    firsts = stsc[:, 0] - 1
    per_chunk = np.zeros(len(chunks), dtype=np.int64)
    for i, (first, count) in enumerate(zip(firsts.tolist(), stsc[:, 1].tolist(), strict=True)):
        last = firsts[i + 1] if i + 1 < len(firsts) else len(chunks)
        per_chunk[first:last] = count
    chunk_of = np.repeat(np.arange(len(chunks)), per_chunk)
    if len(chunk_of) < len(sizes):
        return None
    chunk_of = chunk_of[: len(sizes)]
    ends = np.cumsum(sizes)
    starts = ends - sizes
    first_in_chunk = np.searchsorted(chunk_of, chunk_of, side="left")
    return chunks[chunk_of] + starts - starts[first_in_chunk]
