"""A SQLite database file written directly in the documented file format (sqlite.org/fileformat.html).

Rowid tables and indexes of integer and text columns, their rows given in b-tree order, column by column
(`DatabaseFile`): leaf pages (and overflow pages for records too large for a page) are written as they
fill, interior levels and page 1 (the 100-byte header and the `sqlite_schema` leaf) at the end. Nothing
goes through SQLite, so no value is bound one at a time; SQLite reads the file like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
import pyarrow as pa

PAGE_SIZE = 4096
_SQLITE_VERSION_NUMBER = 3040001  # "SQLite version that last wrote the file": informative only
_LEAF, _INTERIOR = 0x0D, 0x05
_WIDTHS = np.array([0, 1, 2, 3, 4, 6, 8, 0, 0, 0], np.int64)  # bytes of an integer by serial type 0-9


@dataclass(frozen=True)
class Text:
    """A text column: UTF-8 bytes of all values, and n + 1 int64 offsets into them (Arrow's layout)."""

    data: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1


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
    first, last = int(offsets[0]), int(offsets[-1])
    # only the bytes of these values (a view): a slice of a large array would otherwise bring all of it along
    return Text(data[first:last], offsets - first)


Column = np.ndarray | Text


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


def _prepared(columns: Sequence[Column]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Columns as the kernels take them: each column's kind (k >= 0: row k of the integers, ~k: text k),
    the integers (columns x rows), all text bytes, and each text column's offsets into them; and rows."""
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
    return kinds, int_values, text_data, text_offsets, n


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
def _local_size(payload: int, page_size: int, index: bool) -> int:
    """Payload bytes kept in a table leaf cell, or an index cell (leaf or interior); the rest goes to
    overflow pages (the file format's rule)."""
    most = (page_size - 12) * 64 // 255 - 23 if index else page_size - 35
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


_INDEX_LEAF, _INDEX_INTERIOR = 0x0A, 0x02
_CELLS, _CONTENT, _USED, _LAST_CELL, _PENDING, _LAST_ROWID = range(6)  # a tree's open-leaf state


@numba.njit(cache=True, nogil=True, inline="always")
def _shape(kinds: np.ndarray, ints: np.ndarray, text_offsets: np.ndarray, row: int) -> tuple[int, int]:
    """A row's record header size and payload size (header included)."""
    types_len, body = 0, 0
    for c in range(len(kinds)):
        k = kinds[c]
        if k >= 0:
            body += _WIDTHS[_int_type(ints[k, row])]
            types_len += 1
        else:
            length = text_offsets[~k, row + 1] - text_offsets[~k, row]
            body += length
            types_len += _varint_len(13 + 2 * length)
    header = types_len + 1
    while _varint_len(header) > header - types_len:
        header += 1
    return header, header + body


@numba.njit(cache=True, nogil=True, inline="always")
def _put_record(
    buf: np.ndarray,
    pos: int,
    kinds: np.ndarray,
    ints: np.ndarray,
    text_data: np.ndarray,
    text_offsets: np.ndarray,
    row: int,
    header: int,
    widths: np.ndarray,
) -> None:
    """A row's record at `buf[pos:]`: header size, each column's serial type, then the values (big-endian
    integers, text bytes). Each value's width goes to `widths` (scratch, one per column) on the way: plain
    byte loops over known widths compile to code several times faster than branching on the kind of
    every value twice."""
    at = _put_varint(buf, pos, header)
    for c in range(len(kinds)):
        k = kinds[c]
        if k >= 0:
            t = _int_type(ints[k, row])
            widths[c] = _WIDTHS[t]
        else:
            widths[c] = text_offsets[-1 - k, row + 1] - text_offsets[-1 - k, row]
            t = 13 + 2 * widths[c]
        at = _put_varint(buf, at, t)
    at = pos + header
    for c in range(len(kinds)):
        k = kinds[c]
        w = widths[c]
        if k >= 0:
            v = ints[k, row]
            for i in range(w):
                buf[at + w - 1 - i] = (v >> (8 * i)) & 0xFF
        else:
            start = text_offsets[-1 - k, row]
            for i in range(w):
                buf[at + i] = text_data[start + i]
        at += w


@numba.njit(cache=True, nogil=True)
def _bounds(
    kinds: np.ndarray, ints: np.ndarray, text_offsets: np.ndarray, n: int, index: bool, page_size: int
) -> tuple[int, int, int]:
    """What `_leaves` may need for these rows at most: pages it emits, divider bytes, and the largest
    record."""
    cell_bytes, overflow_pages, largest = 0, 0, 0
    for r in range(n):
        p = _shape(kinds, ints, text_offsets, r)[1]
        largest = max(largest, p)
        local = _local_size(p, page_size, index)
        if local < p:
            overflow_pages += (p - local + page_size - 5) // (page_size - 4)
        cell_bytes += local + 24
    # two leaves closed one after the other hold more than a page between them (and the next cell)
    leaves = 2 * (cell_bytes // (page_size - 8) + 2)
    return leaves + overflow_pages, cell_bytes + page_size, largest


@numba.njit(cache=True, nogil=True)
def _leaves(
    kinds: np.ndarray,
    ints: np.ndarray,
    text_data: np.ndarray,
    text_offsets: np.ndarray,
    n: int,
    rowids: np.ndarray,
    index: bool,
    leaf: np.ndarray,
    state: np.ndarray,
    pending: np.ndarray,
    first_page: int,
    image: np.ndarray,
    children: np.ndarray,
    keys: np.ndarray,
    dividers: np.ndarray,
    divider_ends: np.ndarray,
    record: np.ndarray,
) -> tuple[int, int]:
    """Rows appended to a b-tree's leaf level, in key order (rowid order for a table, whose rowids are
    `rowids`; an index's rowid is its last column). The open leaf (`leaf`, `state`) carries over from call
    to call; pages it closes, and overflow pages, go to `image`, numbered from `first_page`, with each
    closed leaf's page number (`children`) and (table) largest rowid (`keys`) or (index) the cell that
    follows it (`dividers`, ending at `divider_ends[i + 1]`), kept for the level above. Buffers are the
    caller's, sized by `_bounds` and reused call after call. An index leaf is closed only when a further
    entry arrives after the one that did not fit (held in `pending`): that entry is the divider, so a
    closed leaf always has one after it. Returns (pages emitted, leaves closed)."""
    page_size = len(leaf)
    room = page_size - 8
    cell = np.empty(page_size, np.uint8)
    widths = np.empty(len(kinds), np.int64)
    emitted, closed = 0, 0
    divider_ends[0] = 0
    flag = _INDEX_LEAF if index else _LEAF
    for r in range(n):
        header, p = _shape(kinds, ints, text_offsets, r)
        size = _put_varint(cell, 0, p)
        if not index:
            size = _put_varint(cell, size, rowids[r])
        local = _local_size(p, page_size, index)
        if local == p:
            _put_record(cell, size, kinds, ints, text_data, text_offsets, r, header, widths)
            size += p
        else:  # the rest in a chain of overflow pages, numbered as they are emitted
            _put_record(record, 0, kinds, ints, text_data, text_offsets, r, header, widths)
            cell[size : size + local] = record[:local]
            size += local
            _put_be(cell, size, first_page + emitted, 4)
            size += 4
            done = local
            while done < p:
                at = emitted * page_size
                image[at : at + page_size] = 0
                chunk = min(page_size - 4, p - done)
                if done + chunk < p:
                    _put_be(image, at, first_page + emitted + 1, 4)
                image[at + 4 : at + 4 + chunk] = record[done : done + chunk]
                done += chunk
                emitted += 1
        if index and state[_PENDING]:  # the held entry divides the full leaf from the next one
            _close_leaf(leaf, state, flag, image, emitted)
            children[closed] = first_page + emitted
            keys[closed] = 0
            start = divider_ends[closed]
            dividers[start : start + state[_PENDING]] = pending[: state[_PENDING]]
            divider_ends[closed + 1] = start + state[_PENDING]
            emitted += 1
            closed += 1
            state[_PENDING] = 0
        if state[_CELLS] and state[_USED] + size + 2 > room:
            if index:
                pending[:size] = cell[:size]
                state[_PENDING] = size
                continue
            _close_leaf(leaf, state, flag, image, emitted)
            children[closed] = first_page + emitted
            keys[closed] = state[_LAST_ROWID]
            divider_ends[closed + 1] = divider_ends[closed]
            emitted += 1
            closed += 1
        _add_cell(leaf, state, cell, size)
        if not index:
            state[_LAST_ROWID] = rowids[r]
    return emitted, closed


@numba.njit(cache=True, nogil=True, inline="always")
def _add_cell(leaf: np.ndarray, state: np.ndarray, cell: np.ndarray, size: int) -> None:
    content = state[_CONTENT] - size
    for i in range(size):  # a few dozen bytes: a slice assignment checks for overlap first, every time
        leaf[content + i] = cell[i]
    _put_be(leaf, 8 + 2 * state[_CELLS], content, 2)
    state[_CONTENT] = content
    state[_CELLS] += 1
    state[_USED] += size + 2
    state[_LAST_CELL] = size


@numba.njit(cache=True, nogil=True, inline="always")
def _close_leaf(leaf: np.ndarray, state: np.ndarray, flag: int, image: np.ndarray, slot: int) -> None:
    """The open leaf, finished, into `image` at page `slot`; the leaf is then empty again."""
    _page_header(leaf, 0, flag, state[_CELLS], state[_CONTENT])
    at = slot * len(leaf)
    image[at : at + len(leaf)] = leaf
    leaf[:] = 0
    state[_CELLS] = 0
    state[_CONTENT] = len(leaf)
    state[_USED] = 0


@numba.njit(cache=True, nogil=True)
def _index_level(
    children: np.ndarray, dividers: np.ndarray, ends: np.ndarray, first_page: int, page_size: int
) -> tuple:
    """One interior level of an index b-tree above `children` (n pages, with n - 1 divider cells between
    them, leaf format: interior cells are the same bytes after a child page number), pages as
    `_split_level` cuts them; the divider after each page but the last goes up a level. Returns (image,
    the level's pages, the dividers between them, their ends)."""
    n = len(children)
    firsts, pages = _split_level(4 + ends[1:] - ends[:-1], page_size)
    image = np.zeros(pages * page_size, np.uint8)
    parents = np.empty(pages, np.int64)
    up_ends = np.zeros(pages, np.int64)
    up = np.empty(max(1, ends[-1]), np.uint8)
    for k in range(pages):
        i = firsts[k]
        last = firsts[k + 1] - 1 if k + 1 < pages else n - 1  # the page's right-most child
        base = k * page_size
        content = base + page_size
        for j in range(i, last):
            size = ends[j + 1] - ends[j]
            content -= 4 + size
            _put_be(image, base + 12 + 2 * (j - i), content - base, 2)
            _put_be(image, content, children[j], 4)
            image[content + 4 : content + 4 + size] = dividers[ends[j] : ends[j + 1]]
        _page_header(image, base, _INDEX_INTERIOR, last - i, content - base)
        _put_be(image, base + 8, children[last], 4)
        parents[k] = first_page + k
        if k + 1 < pages:  # the divider between this page and the next goes up
            size = ends[last + 1] - ends[last]
            up[up_ends[k] : up_ends[k] + size] = dividers[ends[last] : ends[last + 1]]
            up_ends[k + 1] = up_ends[k] + size
    return image, parents, up[: up_ends[pages - 1]].copy(), up_ends


@numba.njit(cache=True, nogil=True)
def _split_level(cells: np.ndarray, page_size: int) -> tuple[np.ndarray, int]:
    """Where each interior page of a level begins (its first child), for n children with the n - 1 cells
    between them (`cells`: bytes of cell j, child j's): pages filled in order, the child after a full page's
    cells its right-most pointer. No page is left with no cell: when only one child would remain for the
    last page, the full page gives up its last cell. Returns (first child of each page, pages)."""
    n = len(cells) + 1
    room = page_size - 12
    firsts = np.empty(n, np.int64)
    pages, i = 0, 0
    while i < n:
        firsts[pages] = i
        used, j = 0, i
        while j < n - 1 and (j == i or used + cells[j] + 2 <= room):
            used += cells[j] + 2
            j += 1
        if j == n - 2:
            j -= 1
        pages += 1
        i = j + 1 if j < n - 1 else n
    return firsts, pages


@numba.njit(cache=True, nogil=True)
def _table_level(children: np.ndarray, keys: np.ndarray, first_page: int, page_size: int) -> tuple:
    """One interior level of a table b-tree above `children`, each with the largest rowid below it, pages
    as `_split_level` cuts them. Returns (image, pages, keys)."""
    n = len(children)
    cells = np.empty(n - 1, np.int64)
    for j in range(n - 1):
        cells[j] = 4 + _varint_len(keys[j])
    firsts, pages = _split_level(cells, page_size)
    image = np.zeros(pages * page_size, np.uint8)
    parents = np.empty(pages, np.int64)
    parent_keys = np.empty(pages, np.int64)
    for k in range(pages):
        i = firsts[k]
        last = firsts[k + 1] - 1 if k + 1 < pages else n - 1
        base = k * page_size
        content = base + page_size
        for j in range(i, last):
            content -= 4 + _varint_len(keys[j])
            _put_be(image, base + 12 + 2 * (j - i), content - base, 2)
            _put_be(image, content, children[j], 4)
            _put_varint(image, content + 4, keys[j])
        _page_header(image, base, _INTERIOR, last - i, content - base)
        _put_be(image, base + 8, children[last], 4)
        parents[k], parent_keys[k] = first_page + k, keys[last]
    return image, parents, parent_keys


class DatabaseFile:
    """A database file written straight to disk, b-tree by b-tree level: rows of rowid tables and entries of
    indexes are appended in their b-tree's order (rowids rising; index entries sorted as SQLite compares
    records, the rowid their last column), each leaf page written as soon as it is full. Closing builds the
    interior levels above each tree's leaves and writes page 1 last: the file's header and `sqlite_schema`,
    whose rows (`schema`: type, name, table name, SQL, as SQLite stores them) point at each tree's root.

    The b-trees are laid out as a bulk load lays them, not as SQLite's own inserts would: the rows and
    every lookup are the same, and `PRAGMA integrity_check` finds the file sound."""

    def __init__(self, path: str, schema: Sequence[tuple[str, str, str, str | None]], page_size: int = PAGE_SIZE):
        if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
            raise ValueError(f"page size {page_size}: must be a power of two from 512 to 65536")
        self.page_size = page_size
        self._schema = list(schema)
        self._file = open(path, "wb")  # noqa: SIM115  (closed by `close`)
        self._file.write(bytes(page_size))  # page 1, written last
        self._next_page = 2
        self._trees = {name: _Tree(kind == "index", page_size) for kind, name, _, _ in self._schema}
        self._scratch: list[np.ndarray] = [np.zeros(0, np.uint8), np.zeros(0, np.int64)]
        self._scratch += [np.zeros(0, np.uint8), np.zeros(0, np.uint8)]

    def append(self, name: str, columns: Sequence[Column], rowids: np.ndarray | None = None) -> None:
        """Rows of table `name` with their `rowids`, or entries of index `name` (its columns, then the
        rowid), continuing the tree's order from the previous call."""
        tree = self._trees[name]
        if (rowids is None) != tree.index:
            raise ValueError(f"{name}: rowids go with the rows of a table, an index has them as its last column")
        kinds, ints, text_data, text_offsets, n = _prepared(columns)
        if not n:
            return
        if rowids is not None:
            rowids = _int64(rowids)
            if len(rowids) != n:
                raise ValueError(f"{name}: {len(rowids)} rowids for {n} rows")
        pages, divider_bytes, largest = _bounds(kinds, ints, text_offsets, n, tree.index, self.page_size)
        image, children, dividers, record = self._buffers(pages, divider_bytes, largest)
        keys, ends = np.empty(len(children), np.int64), np.empty(len(children) + 1, np.int64)
        emitted, closed = _leaves(
            kinds,
            ints,
            text_data,
            text_offsets,
            n,
            rowids if rowids is not None else np.zeros(0, np.int64),
            tree.index,
            tree.leaf,
            tree.state,
            tree.pending,
            self._next_page,
            image,
            children,
            keys,
            dividers,
            ends,
            record,
        )
        self._write(image[: emitted * self.page_size])
        tree.add(children[:closed].copy(), keys[:closed], dividers[: ends[closed]].copy(), ends[: closed + 1])

    def _buffers(self, pages: int, divider_bytes: int, largest: int) -> list[np.ndarray]:
        """The kernel's output buffers, kept from call to call: memory touched for the first time costs
        more than filling it."""
        wants = (pages * self.page_size, pages, divider_bytes, largest)
        kinds = (np.uint8, np.int64, np.uint8, np.uint8)
        for i, (want, kind) in enumerate(zip(wants, kinds, strict=True)):
            if len(self._scratch[i]) < want:
                self._scratch[i] = np.zeros(max(want, 2 * len(self._scratch[i])), kind)
        return self._scratch

    def close(self) -> None:
        """The interior levels and page 1; the file is complete and closed."""
        roots = {}
        for name, tree in self._trees.items():
            image, *level = tree.last_leaves(self._next_page)
            self._write(image)
            tree.add(*level)
            children, keys, dividers, ends = tree.level()
            while len(children) > 1:
                if tree.index:
                    image, children, dividers, ends = _index_level(
                        children, dividers, ends, self._next_page, self.page_size
                    )
                else:
                    image, children, keys = _table_level(children, keys, self._next_page, self.page_size)
                self._write(image)
            roots[name] = int(children[0])
        rows = [(kind, name, table, roots[name], sql) for kind, name, table, sql in self._schema]
        with self._file:
            first = _schema_leaf(rows, self.page_size)
            self._file.seek(0)
            self._file.write(_header(self.page_size, self._next_page - 1) + first)

    def abandon(self) -> None:
        """Stop without completing the file (a failed run: its caller removes it)."""
        self._file.close()

    def _write(self, image: np.ndarray) -> None:
        self._file.write(image.data)
        self._next_page += len(image) // self.page_size


class _Tree:
    """One b-tree being appended to: its open leaf and what the level above needs of the closed ones."""

    def __init__(self, index: bool, page_size: int) -> None:
        self.index = index
        self.leaf = np.zeros(page_size, np.uint8)
        self.state = np.zeros(6, np.int64)
        self.state[_CONTENT] = page_size
        self.pending = np.zeros(page_size, np.uint8)  # an index entry held back as the next divider
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, children: np.ndarray, keys: np.ndarray, dividers: np.ndarray, ends: np.ndarray) -> None:
        if len(children):
            self._parts.append((children, keys, dividers, np.diff(ends)))

    def last_leaves(self, first_page: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The open leaf closed, as the last page(s) of the leaf level: a held index entry goes after the
        leaf's last cell, which moves up as the divider between them (a full index leaf has several cells)."""
        size = self.page_size
        flag = _INDEX_LEAF if self.index else _LEAF
        if self.index and self.state[_PENDING]:
            last = int(self.state[_LAST_CELL])
            at = int(self.state[_CONTENT])
            divider = self.leaf[at : at + last].copy()
            self.leaf[at : at + last] = 0
            cells = int(self.state[_CELLS]) - 1
            self.leaf[8 + 2 * cells : 10 + 2 * cells] = 0
            self.state[_CELLS], self.state[_CONTENT] = cells, at + last
            self.state[_USED] -= last + 2
            image = np.zeros(2 * size, np.uint8)
            _close_leaf(self.leaf, self.state, flag, image, 0)
            _add_cell(self.leaf, self.state, self.pending, int(self.state[_PENDING]))
            _close_leaf(self.leaf, self.state, flag, image, 1)
            self.state[_PENDING] = 0
            children = np.array([first_page, first_page + 1], np.int64)
            return image, children, np.zeros(2, np.int64), divider, np.array([0, last, last], np.int64)
        image = np.zeros(size, np.uint8)
        key = self.state[_LAST_ROWID]
        _close_leaf(self.leaf, self.state, flag, image, 0)
        return (
            image,
            np.array([first_page], np.int64),
            np.array([key], np.int64),
            np.zeros(0, np.uint8),
            np.zeros(2, np.int64),
        )

    @property
    def page_size(self) -> int:
        return len(self.leaf)

    def level(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every leaf page, the largest rowid below each (tables), the cells between them (indexes) and
        their ends."""
        children = np.concatenate([p[0] for p in self._parts])
        keys = np.concatenate([p[1] for p in self._parts])
        dividers = np.concatenate([p[2] for p in self._parts])
        ends = np.zeros(len(children), np.int64)
        np.cumsum(np.concatenate([p[3] for p in self._parts])[: len(children) - 1], out=ends[1:])
        return children, keys, dividers, ends


def _schema_leaf(rows: list[tuple[str, str, str, int, str | None]], page_size: int) -> bytes:
    """Page 1 after the file header: the `sqlite_schema` table's one leaf (a handful of rows)."""
    cells = []
    for rowid, row in enumerate(rows, start=1):
        record = _py_record(row)
        cells.append(_py_varint(len(record)) + _py_varint(rowid) + record)
    page = bytearray(page_size - 100)
    content = len(page)
    for i, cell in enumerate(cells):
        content -= len(cell)
        if content < 8 + 2 * len(cells):
            raise ValueError("the schema does not fit on the first page")
        page[content : content + len(cell)] = cell
        page[8 + 2 * i : 10 + 2 * i] = (content + 100).to_bytes(2, "big")
    page[0] = _LEAF
    page[3:5] = len(cells).to_bytes(2, "big")
    page[5:7] = (content + 100).to_bytes(2, "big")
    return bytes(page)


def _py_record(values: Sequence[int | str | None]) -> bytes:
    """One record in Python (schema rows: NULL, integer and text values)."""
    types, body = [], b""
    for v in values:
        if v is None:
            types.append(0)
        elif isinstance(v, int):
            t = int(_int_type(v))
            types.append(t)
            body += v.to_bytes(int(_WIDTHS[t]), "big", signed=True) if _WIDTHS[t] else b""
        else:
            data = v.encode()
            types.append(13 + 2 * len(data))
            body += data
    header = b"".join(_py_varint(t) for t in types)
    size = len(header) + 1
    while len(_py_varint(size)) + len(header) != size:
        size = len(_py_varint(size)) + len(header)
    return _py_varint(size) + header + body


def _py_varint(v: int) -> bytes:
    out = [v & 0x7F]
    v >>= 7
    while v:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    return bytes(reversed(out))
