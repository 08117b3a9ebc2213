"""A SQLite database file image written directly in the documented file format (sqlite.org/fileformat.html).

For rowid tables of integer and text columns whose rows have rowids 1..n in order: a 100-byte header, page 1
the `sqlite_schema` leaf holding the CREATE TABLE statements, then each table's b-tree (leaf pages, overflow
pages for records too large for a page, interior pages above them). Nothing goes through SQLite, so no
value is bound one at a time; `sqlite3.Connection.deserialize` reads the image like any database file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
import pyarrow as pa

PAGE_SIZE = 4096
_SQLITE_VERSION_NUMBER = 3040001  # "SQLite version that last wrote the file": informative only
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_LEAF, _INTERIOR = 0x0D, 0x05
_WIDTHS = np.array([0, 1, 2, 3, 4, 6, 8, 0, 0, 0], np.int64)  # bytes of an integer by serial type 0-9


@dataclass(frozen=True)
class Text:
    """A text column: UTF-8 bytes of all values, and n + 1 int64 offsets into them (Arrow's layout)."""

    data: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1


def text_from_strings(values: Sequence[str]) -> Text:
    """A text column from Python strings (small columns: the schema's, tests')."""
    encoded = [v.encode() for v in values]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return Text(np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets)


def text_from_arrow(values: pa.Array | pa.ChunkedArray) -> Text:
    """A text column from an Arrow string array of any layout, without nulls (a value must be text)."""
    if values.null_count:
        raise ValueError("text column has nulls: only integer and text values can be written")
    array = values.cast(pa.large_string())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if not isinstance(array, pa.LargeStringArray):  # an empty chunked array combines to another type
        array = pa.array([], type=pa.large_string())
    _, offset_buffer, data_buffer = array.buffers()
    n = len(array)
    offsets = np.frombuffer(offset_buffer, dtype=np.int64, count=array.offset + n + 1)[array.offset :]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    return Text(data, offsets)


Column = np.ndarray | Text


def database_image(tables: dict[str, dict[str, Column]], page_size: int = PAGE_SIZE) -> bytes:
    """A database file image with one rowid table per entry (name -> column name -> values), row i having
    rowid i + 1. Integer columns are int64-convertible numpy arrays, text columns `Text`; columns are
    declared without a type, so each value keeps its own (INTEGER or TEXT), as parameters bound in Python
    would."""
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        raise ValueError(f"page size {page_size}: must be a power of two from 512 to 65536")
    # Root pages are 2, 3, ... as SQLite itself puts them: images with the same tables then have the same
    # schema, so a connection that deserializes one after another under one name never reads a cached
    # schema whose root pages differ from the image's.
    roots: list[np.ndarray] = []
    rest: list[tuple[np.ndarray, np.ndarray]] = []
    statements = []
    next_page = 2 + len(tables)
    for i, (table, columns) in enumerate(tables.items()):
        if not columns:
            raise ValueError(f"table {table!r} has no columns")
        for name in (table, *columns):
            if not _NAME.match(name):
                raise ValueError(f"name {name!r}: only letters, digits and underscores (not first) are allowed")
        root, others = _table_pages(list(columns.values()), 2 + i, next_page, 0, page_size)
        roots.append(root)
        rest.append(others)
        # quoted: a name that is also an SQL keyword ("order") still makes a statement SQLite can read
        quoted = ", ".join(f'"{c}"' for c in columns)
        statements.append(f'CREATE TABLE "{table}" ({quoted})')
        next_page += sum(len(p) for p in others) // page_size
    names = list(tables)
    schema, overflow = _table_pages(
        [
            text_from_strings(["table"] * len(names)),
            text_from_strings(names),
            text_from_strings(names),
            np.arange(2, 2 + len(names), dtype=np.int64),
            text_from_strings(statements),
        ],
        1,
        next_page,
        100,
        page_size,
    )
    if any(len(p) for p in overflow):
        raise ValueError("the CREATE TABLE statements do not fit on the first page")
    header = _header(page_size, next_page - 1)
    return b"".join([header, schema[100:].data, *(p.data for p in roots), *(p.data for pages in rest for p in pages)])


def _header(page_size: int, page_count: int) -> bytes:
    """The 100-byte database header: UTF-8, schema format 4 (needed for serial types 8 and 9), no freelist,
    no auto-vacuum; the page count is valid because the change counter equals version-valid-for."""
    h = bytearray(100)
    h[0:16] = b"SQLite format 3\0"
    h[16:18] = (page_size if page_size < 65536 else 1).to_bytes(2, "big")
    h[18:24] = bytes([1, 1, 0, 64, 32, 32])  # legacy read/write, no reserved bytes, payload fractions
    h[24:28] = (1).to_bytes(4, "big")  # file change counter
    h[28:32] = page_count.to_bytes(4, "big")
    h[40:44] = (1).to_bytes(4, "big")  # schema cookie
    h[44:48] = (4).to_bytes(4, "big")  # schema format
    h[56:60] = (1).to_bytes(4, "big")  # text encoding: UTF-8
    h[92:96] = (1).to_bytes(4, "big")  # version-valid-for
    h[96:100] = _SQLITE_VERSION_NUMBER.to_bytes(4, "big")
    return bytes(h)


def _table_pages(
    columns: list[Column], root_page: int, first_page: int, offset: int, page_size: int
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """One table's b-tree: (its root page, numbered `root_page`, and its other pages, numbered on from
    `first_page`, as the runs before and after the root); page 1 starts at `offset` 100, after the file
    header. Views of one buffer: the file is copied together once."""
    n = len(columns[0])
    if any(len(c) != n for c in columns):
        raise ValueError(f"columns of different lengths: {[len(c) for c in columns]}")
    ints = [_int64(c) for c in columns if not isinstance(c, Text)]
    texts = [c for c in columns if isinstance(c, Text)]
    kinds, next_int, next_text = np.empty(len(columns), np.int64), 0, 0
    for i, c in enumerate(columns):
        if isinstance(c, Text):
            kinds[i] = ~next_text
            next_text += 1
        else:
            kinds[i] = next_int
            next_int += 1
    int_values = np.stack(ints) if ints else np.zeros((0, n), np.int64)
    text_data = np.concatenate([t.data for t in texts]) if texts else np.zeros(0, np.uint8)
    bases = np.cumsum([0] + [len(t.data) for t in texts])
    text_offsets = np.empty((len(texts), n + 1), np.int64)
    for j, t in enumerate(texts):
        _check_text(t)
        text_offsets[j] = np.asarray(t.offsets, dtype=np.int64) + bases[j]
    out = np.zeros(1, np.int64)
    image = _btree(kinds, int_values, text_data, text_offsets, n, root_page, first_page, offset, page_size, out)
    at = int(out[0]) * page_size
    return image[at : at + page_size], (image[:at], image[at + page_size :])


def _check_text(text: Text) -> None:
    """The kernel trusts offsets (no bounds checks in compiled code): bad ones are refused here."""
    if text.data.dtype != np.uint8:
        raise ValueError(f"text data of {text.data.dtype}: must be UTF-8 bytes (uint8)")
    offsets = text.offsets
    if len(offsets) and (offsets[0] < 0 or offsets[-1] > len(text.data) or (np.diff(offsets) < 0).any()):
        raise ValueError("text offsets must rise from 0 or more to at most the data's length")


def _int64(values: np.ndarray) -> np.ndarray:
    """An integer column as int64, refusing what would change on the way (floats, unsigned values past int64)."""
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"column of {values.dtype}: only integer and text columns can be written")
    if values.dtype == np.uint64 and len(values) and values.max() > np.iinfo(np.int64).max:
        raise ValueError("integer column has values past the int64 range")
    return values.astype(np.int64, copy=False)


@numba.njit(cache=True, nogil=True, inline="always")
def _varint_len(v: int) -> int:
    """Bytes of SQLite's big-endian varint (7 bits a byte) for a value from 0 to 2**56 - 1: the only values
    written as varints are sizes, serial types and rowids, far below that."""
    n = 1
    while v >> (7 * n):
        n += 1
    return n


@numba.njit(cache=True, nogil=True, inline="always")
def _put_varint(buf: np.ndarray, pos: int, v: int) -> int:
    if v < 0x80:  # nearly every one: serial types, short payloads
        buf[pos] = v
        return pos + 1
    n = _varint_len(v)
    for i in range(n - 1, -1, -1):
        buf[pos + i] = (v & 0x7F) | (0x80 if i < n - 1 else 0)
        v >>= 7
    return pos + n


@numba.njit(cache=True, nogil=True, inline="always")
def _int_type(v: int) -> int:
    """The serial type SQLite itself picks: 8 and 9 for 0 and 1, else the smallest two's complement width."""
    if v == 0:
        return 8
    if v == 1:
        return 9
    if -128 <= v < 128:
        return 1
    if -32768 <= v < 32768:
        return 2
    if -8388608 <= v < 8388608:
        return 3
    if -2147483648 <= v < 2147483648:
        return 4
    if -140737488355328 <= v < 140737488355328:
        return 5
    return 6


@numba.njit(cache=True, nogil=True, inline="always")
def _records(kinds: np.ndarray, ints: np.ndarray, text_offsets: np.ndarray, n: int) -> tuple:
    """Each row's serial types (rows x columns), record header size and payload size, column by column:
    one kind of value per inner loop, no branch on the column's kind for every value."""
    serial_types = np.empty((n, len(kinds)), np.int64)
    types_len = np.zeros(n, np.int64)
    payloads = np.zeros(n, np.int64)
    for c in range(len(kinds)):
        k = kinds[c]
        if k >= 0:
            for r in range(n):
                t = _int_type(ints[k, r])
                serial_types[r, c] = t
                payloads[r] += _WIDTHS[t]
            types_len += 1  # integer serial types are one-byte varints
        else:
            for r in range(n):
                length = text_offsets[~k, r + 1] - text_offsets[~k, r]
                t = 13 + 2 * length
                serial_types[r, c] = t
                types_len[r] += _varint_len(t)
                payloads[r] += length
    header_sizes = types_len + 1
    for r in range(n):
        while _varint_len(header_sizes[r]) > header_sizes[r] - types_len[r]:  # the size counts its own bytes
            header_sizes[r] += 1
    payloads += header_sizes
    return serial_types, header_sizes, payloads


@numba.njit(cache=True, nogil=True, inline="always")
def _write_record(
    buf: np.ndarray,
    pos: int,
    kinds: np.ndarray,
    ints: np.ndarray,
    text_data: np.ndarray,
    text_offsets: np.ndarray,
    row: int,
    header_size: int,
    serial_types: np.ndarray,
) -> None:
    """The record: header size, each column's serial type, then the values (big-endian integers, text bytes)."""
    at = _put_varint(buf, pos, header_size)
    for c in range(len(kinds)):
        at = _put_varint(buf, at, serial_types[row, c])
    at = pos + header_size
    for c in range(len(kinds)):
        k = kinds[c]
        if k >= 0:
            v = ints[k, row]
            w = _WIDTHS[serial_types[row, c]]
            _put_be(buf, at, v, w)
            at += w
        else:
            a, b = text_offsets[~k, row], text_offsets[~k, row + 1]
            for i in range(b - a):  # a slice assignment would check for overlap, and copy, on every row
                buf[at + i] = text_data[a + i]
            at += b - a


@numba.njit(cache=True, nogil=True, inline="always")
def _local_size(payload: int, page_size: int) -> int:
    """Payload bytes kept in a table leaf cell; the rest goes to overflow pages (the file format's rule)."""
    most = page_size - 35
    if payload <= most:
        return payload
    least = (page_size - 12) * 32 // 255 - 23
    k = least + (payload - least) % (page_size - 4)
    return k if k <= most else least


@numba.njit(cache=True, nogil=True, inline="always")
def _put_be(buf: np.ndarray, pos: int, v: int, width: int) -> None:
    """`width` bytes of `v`, big-endian (two's complement for negative integers)."""
    for i in range(width):
        buf[pos + width - 1 - i] = (v >> (8 * i)) & 0xFF


@numba.njit(cache=True, nogil=True, inline="always")
def _page_header(buf: np.ndarray, at: int, flag: int, cells: int, content: int) -> None:
    buf[at] = flag
    _put_be(buf, at + 3, cells, 2)
    _put_be(buf, at + 5, content if content < 65536 else 0, 2)


@numba.njit(cache=True, nogil=True, inline="always")
def _number(index: int, root: int, root_page: int, first_page: int) -> int:
    """The page number of the b-tree's page at `index`: the root's is fixed, the others follow `first_page`."""
    if index == root:
        return root_page
    return first_page + index - (index > root)


@numba.njit(cache=True, nogil=True)
def _btree(
    kinds: np.ndarray,
    ints: np.ndarray,
    text_data: np.ndarray,
    text_offsets: np.ndarray,
    n: int,
    root_page: int,
    first_page: int,
    offset: int,
    page_size: int,
    root_out: np.ndarray,
) -> np.ndarray:
    """Compiled: a Python loop over rows costs about as much as binding them through sqlite3, which is what
    this replaces. Leaves are filled greedily in rowid order (page k: `offset` bytes in, if page 1), then the
    overflow pages, then interior levels bottom-up, children spread evenly (never an interior page with one
    child); the root (the single leaf, or the last interior page; its index goes to `root_out`) is numbered
    `root_page`, the others `first_page` on in that order."""
    serial_types, header_sizes, payloads = _records(kinds, ints, text_offsets, n)
    cells = np.empty(n, np.int64)
    overflows = np.empty(n, np.int64)
    leaf_end = np.empty(max(n, 1), np.int64)
    leaves, used, total_overflow, largest = 0, 0, 0, 0
    room = page_size - offset - 8
    for r in range(n):
        p = payloads[r]
        largest = max(largest, p)
        local = _local_size(p, page_size)
        overflows[r] = 0 if local == p else (p - local + page_size - 5) // (page_size - 4)
        total_overflow += overflows[r]
        cells[r] = _varint_len(p) + _varint_len(r + 1) + local + (0 if local == p else 4)
        if used + cells[r] + 2 > room and (used or room < page_size - 8):  # too large for page 1: not there
            leaf_end[leaves] = r
            leaves += 1
            used, room = 0, page_size - 8
        used += cells[r] + 2
    leaf_end[leaves] = n
    leaves += 1
    # interior levels: how many pages each, children spread evenly
    level_sizes = np.zeros(16, np.int64)
    levels, count, interior = 0, leaves, 0
    while count > 1:
        per_cell = 4 + _varint_len(n) + 2
        pages = -(-count // ((page_size - 12) // per_cell + 1))
        level_sizes[levels] = pages
        levels += 1
        interior += pages
        count = pages
    total = leaves + total_overflow + interior
    image = np.zeros(total * page_size, np.uint8)
    scratch = np.empty(largest, np.uint8)

    root = total - 1 if levels else 0
    next_overflow = leaves
    r = 0
    for leaf in range(leaves):
        base = leaf * page_size
        at = base + (offset if leaf == 0 else 0)
        content = base + page_size
        pointer = at + 8
        for row in range(r, leaf_end[leaf]):
            content -= cells[row]
            _put_be(image, pointer, content - base, 2)
            pointer += 2
            p = payloads[row]
            pos = _put_varint(image, content, p)
            pos = _put_varint(image, pos, row + 1)
            if overflows[row] == 0:
                _write_record(image, pos, kinds, ints, text_data, text_offsets, row, header_sizes[row], serial_types)
                continue
            _write_record(scratch, 0, kinds, ints, text_data, text_offsets, row, header_sizes[row], serial_types)
            local = _local_size(p, page_size)
            image[pos : pos + local] = scratch[:local]
            _put_be(image, pos + local, _number(next_overflow, root, root_page, first_page), 4)
            done = local
            for k in range(overflows[row]):
                page = next_overflow + k
                o = page * page_size
                if k + 1 < overflows[row]:
                    _put_be(image, o, _number(page + 1, root, root_page, first_page), 4)
                chunk = min(page_size - 4, p - done)
                image[o + 4 : o + 4 + chunk] = scratch[done : done + chunk]
                done += chunk
            next_overflow += overflows[row]
        _page_header(image, at, _LEAF, leaf_end[leaf] - r, content - base)
        r = leaf_end[leaf]

    # children of the level being built: page numbers and largest rowid below each
    child_pages = np.arange(leaves).astype(np.int64)
    child_keys = leaf_end[:leaves].copy()
    page = leaves + total_overflow
    for level in range(levels):
        pages = level_sizes[level]
        count = len(child_pages)
        parent_pages = np.empty(pages, np.int64)
        parent_keys = np.empty(pages, np.int64)
        c = 0
        for j in range(pages):
            end = count * (j + 1) // pages
            base = page * page_size
            content = base + page_size
            pointer = base + 12
            for i in range(c, end - 1):
                content -= 4 + _varint_len(child_keys[i])
                _put_be(image, pointer, content - base, 2)
                pointer += 2
                _put_be(image, content, _number(child_pages[i], root, root_page, first_page), 4)
                _put_varint(image, content + 4, child_keys[i])
            _page_header(image, base, _INTERIOR, end - 1 - c, content - base)
            _put_be(image, base + 8, _number(child_pages[end - 1], root, root_page, first_page), 4)
            parent_pages[j], parent_keys[j] = page, child_keys[end - 1]
            page += 1
            c = end
        child_pages, child_keys = parent_pages, parent_keys
    root_out[0] = root
    return image
