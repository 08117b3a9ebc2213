"""SQLite itself is the judge: it opens each file, returns exactly the rows (values and types) written, and
finds nothing wrong with it (`PRAGMA integrity_check`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pytest

from raymerge import sqliteimage
from raymerge.sqliteimage import Text, text_from_arrow

INTS = [0, 1, -1, 2, 127, 128, -128, -129, 32767, -32768, 32768, 8388607, -8388608, 8388608, 2**31 - 1, -(2**31)]
INTS += [2**31, 2**47 - 1, -(2**47), 2**47, 2**63 - 1, -(2**63), 1 << 40, -(1 << 40)]
TEXTS = ["", "a", "é", "日本語のキー", "🙂 emoji", "tab\tand\nnewline", "nul\0inside", "x" * 127, "y" * 128]


def text_from_strings(values: Sequence[str]) -> Text:
    return text_from_arrow(pa.array(list(values), type=pa.large_string()))


def built(path, tables: dict, page_size: int = sqliteimage.PAGE_SIZE) -> sqlite3.Connection:
    """Rowid tables (name -> column name -> values) with rows 1..n, opened and checked by SQLite."""
    schema = []
    for table, columns in tables.items():
        quoted = ", ".join(f'"{c}"' for c in columns)
        schema.append(("table", table, table, f'CREATE TABLE "{table}" ({quoted})'))
    db = sqliteimage.DatabaseFile(str(path), schema, page_size)
    for table, columns in tables.items():
        values = list(columns.values())
        db.append(table, values, np.arange(1, len(values[0]) + 1))
    db.close()
    found = sqlite3.connect(path)
    assert found.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert found.execute("PRAGMA page_count").fetchone()[0] * page_size == path.stat().st_size
    return found


def rows(db: sqlite3.Connection, table: str, columns: list[str]) -> list[tuple]:
    typed = ", ".join(f'"{c}", typeof("{c}")' for c in columns)
    return db.execute(f'SELECT rowid, {typed} FROM "{table}" ORDER BY rowid').fetchall()


def expected(*columns: list) -> list[tuple]:
    """(rowid, value, type, value, type...) as SQLite reports them."""
    out = []
    for i, values in enumerate(zip(*columns, strict=True)):
        row: list = [i + 1]
        for v in values:
            row += [v, "integer" if isinstance(v, int) else "text"]
        out.append(tuple(row))
    return out


def test_edge_values_read_back_with_their_types(tmp_path):
    n = len(INTS)
    keys = [TEXTS[i % len(TEXTS)] for i in range(n)]
    tables = {
        "t": {"a": np.array(INTS, dtype=np.int64), "k": text_from_strings(keys), "b": np.arange(n, dtype=np.int32)}
    }
    db = built(tmp_path / "db", tables)
    assert rows(db, "t", ["a", "k", "b"]) == expected(INTS, keys, list(range(n)))
    assert db.execute("SELECT sql FROM sqlite_schema").fetchall() == [('CREATE TABLE "t" ("a", "k", "b")',)]


@pytest.mark.parametrize("page_size", [512, 4096, 65536])
def test_no_rows_and_one_row_under_keyword_names(tmp_path, page_size):
    tables = {
        "empty": {"a": np.zeros(0, np.int64), "k": text_from_strings([])},
        "order": {"select": text_from_strings(["only"]), "a": np.array([-5])},
    }
    db = built(tmp_path / "db", tables, page_size)
    assert rows(db, "empty", ["a", "k"]) == []
    assert rows(db, "order", ["select", "a"]) == expected(["only"], [-5])
    assert [name for (name,) in db.execute("SELECT name FROM sqlite_schema")] == ["empty", "order"]


def page_depth(image: bytes, page_size: int, root: int) -> int:
    """Levels from the root to the leaves, following the right-most pointers."""
    depth, page = 1, root
    while image[(page - 1) * page_size + (100 if page == 1 else 0)] == 0x05:
        at = (page - 1) * page_size + 8
        page = int.from_bytes(image[at : at + 4], "big")
        depth += 1
    return depth


def test_many_rows_make_several_interior_levels(tmp_path):
    n, page_size = 20_000, 512
    keys = [f"{i:08d}" * 12 for i in range(n)]
    values = ((np.arange(n, dtype=np.int64) * 7919) % 100_003 - 50_000) * (1 << 20)
    db = built(tmp_path / "db", {"t": {"k": text_from_strings(keys), "v": values}}, page_size)
    root = db.execute("SELECT rootpage FROM sqlite_schema").fetchone()[0]
    assert page_depth((tmp_path / "db").read_bytes(), page_size, root) >= 4
    assert rows(db, "t", ["k", "v"]) == expected(keys, values.tolist())
    assert db.execute("SELECT v FROM t WHERE rowid = 12345").fetchone() == (int(values[12344]),)


@pytest.mark.parametrize("page_size", [512, 4096, 65536])
def test_long_values_go_to_overflow_pages(tmp_path, page_size):
    # every length around the point where a record stops fitting, and some spanning several overflow pages
    lengths = [*range(0, 3 * page_size, max(1, page_size // 64)), *range(page_size - 60, page_size), 70_000]
    keys = ["ü" * (n // 2) + "k" * (n % 2) for n in lengths]
    db = built(tmp_path / "db", {"t": {"i": np.arange(len(keys)), "k": text_from_strings(keys)}}, page_size)
    assert rows(db, "t", ["i", "k"]) == expected(list(range(len(keys))), keys)


def test_text_from_arrow_slices_views_and_chunks(tmp_path):
    values = ["a", "bé", "", "long" * 1000, "z"]
    sliced = pa.array(values, type=pa.string()).slice(1, 3)
    chunked = pa.chunked_array([pa.array(values[:2]), pa.array(values[2:], type=pa.string())])
    view = pa.array(values, type=pa.string_view())
    empty = pa.chunked_array([], type=pa.string())
    tables = {
        "s": {"k": text_from_arrow(sliced)},
        "c": {"k": text_from_arrow(chunked)},
        "v": {"k": text_from_arrow(view)},
        "e": {"k": text_from_arrow(empty)},
    }
    db = built(tmp_path / "db", tables)
    assert rows(db, "s", ["k"]) == expected(values[1:4])
    assert rows(db, "c", ["k"]) == expected(values)
    assert rows(db, "v", ["k"]) == expected(values)
    assert rows(db, "e", ["k"]) == []


def test_unsigned_and_narrow_integers_keep_their_values(tmp_path):
    big = np.array([0, 1, 2**63 - 1], dtype=np.uint64)
    small = np.array([-128, 0, 127], dtype=np.int8)
    db = built(tmp_path / "db", {"t": {"u": big, "s": small}})
    assert rows(db, "t", ["u", "s"]) == expected([0, 1, 2**63 - 1], [-128, 0, 127])


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ([np.arange(2), np.arange(3)], r"columns of different lengths: \[2, 3\]"),
        ([np.array([1.5])], "column of float64: only integer and text columns"),
        ([np.array([2**63], dtype=np.uint64)], "past the int64 range"),
        ([Text(np.zeros(3, np.int64), np.array([0, 3]))], "text data of int64"),
        ([Text(np.zeros(3, np.uint8), np.array([0, 4]))], "text offsets must rise"),
        ([Text(np.zeros(3, np.uint8), np.array([2, 1, 3]))], "text offsets must rise"),
        ([Text(np.zeros(3, np.uint8), np.array([-1, 3]))], "text offsets must rise"),
    ],
)
def test_bad_columns_are_refused(tmp_path, columns, message):
    db = sqliteimage.DatabaseFile(str(tmp_path / "db"), [("table", "t", "t", "CREATE TABLE t (a, b)")])
    with pytest.raises(ValueError, match=message):
        db.append("t", columns, np.arange(1, len(columns[0]) + 1))
    db.abandon()


def test_a_schema_too_large_for_the_first_page_is_refused(tmp_path):
    schema = [("table", f"t{i}", f"t{i}", f"CREATE TABLE t{i} ({'c' * 60})") for i in range(60)]
    db = sqliteimage.DatabaseFile(str(tmp_path / "db"), schema)
    with pytest.raises(ValueError, match="the schema does not fit on the first page"):
        db.close()


def test_text_with_nulls_is_refused():
    with pytest.raises(ValueError, match="text column has nulls"):
        text_from_arrow(pa.array(["a", None]))


@pytest.mark.parametrize("page_size", [256, 1000, 131072])
def test_bad_page_size_is_refused(tmp_path, page_size):
    with pytest.raises(ValueError, match=f"page size {page_size}: must be a power of two from 512 to 65536"):
        sqliteimage.DatabaseFile(str(tmp_path / "db"), [], page_size)
    assert not (tmp_path / "db").exists()


def test_wide_rows_have_a_two_byte_record_header(tmp_path):
    # 100 columns of 60-byte text: each serial type takes two bytes, so the header size needs two as well
    columns = {f"c{i}": text_from_strings([chr(65 + i % 26) * 60, "é" * 30]) for i in range(100)}
    columns["n"] = np.array([2**40, -7])
    db = built(tmp_path / "db", {"wide": columns})
    texts = [[chr(65 + i % 26) * 60, "é" * 30] for i in range(100)]
    assert rows(db, "wide", list(columns)) == expected(*texts, [2**40, -7])


def streamed(path, page_size: int, rows: list[tuple[int, str]], batch_sizes: list[int]) -> sqlite3.Connection:
    """Table t (a, k) and index i on (k, a), appended in batches of the given sizes."""
    db = sqliteimage.DatabaseFile(
        str(path),
        [("table", "t", "t", "CREATE TABLE t (a INTEGER, k TEXT)"), ("index", "i", "t", "CREATE INDEX i ON t (k, a)")],
        page_size,
    )
    ordered = sorted(range(len(rows)), key=lambda r: (rows[r][1].encode(), rows[r][0], r))
    at = 0
    for size in batch_sizes:
        part = range(at, min(len(rows), at + size))
        db.append(
            "t",
            [np.array([rows[r][0] for r in part], np.int64), text_from_strings([rows[r][1] for r in part])],
            np.array(part, np.int64) + 1,
        )
        entries = [ordered[r] for r in part]
        db.append(
            "i",
            [
                text_from_strings([rows[e][1] for e in entries]),
                np.array([rows[e][0] for e in entries], np.int64),
                np.array(entries, np.int64) + 1,
            ],
        )
        at += size
    db.close()
    found = sqlite3.connect(path)
    assert found.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    return found


@pytest.mark.parametrize("page_size", [512, 4096])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 40, 3000])
def test_streamed_tables_and_indexes_hold_their_rows_in_order(tmp_path, page_size, n):
    rng = np.random.default_rng(n + page_size)
    lengths = rng.choice([0, 1, 5, 30, 200, 600, 1500, 5000], size=n, p=[0.05, 0.1, 0.3, 0.3, 0.1, 0.06, 0.05, 0.04])
    rows = [(int(rng.integers(-(2**40), 2**40)), TEXTS[i % len(TEXTS)] + "z" * int(z)) for i, z in enumerate(lengths)]
    cuts = rng.integers(1, 700, size=n + 1).tolist()
    db = streamed(tmp_path / "db.sqlite", page_size, rows, cuts)
    assert db.execute("SELECT a, k FROM t ORDER BY rowid").fetchall() == rows
    by_index = db.execute("SELECT k, a, rowid FROM t INDEXED BY i WHERE k >= '' ORDER BY k, a").fetchall()
    assert by_index == sorted(
        ((k, a, r + 1) for r, (a, k) in enumerate(rows)), key=lambda e: (e[0].encode(), e[1], e[2])
    )
    for a, k in rows[:: max(1, n // 20)]:
        assert (a, k) in db.execute("SELECT a, k FROM t WHERE k = ?", (k,)).fetchall()
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    assert pages * page_size == (tmp_path / "db.sqlite").stat().st_size


def test_streamed_rows_need_their_rowids_and_an_index_none(tmp_path):
    db = sqliteimage.DatabaseFile(
        str(tmp_path / "db.sqlite"),
        [("table", "t", "t", "CREATE TABLE t (a)"), ("index", "i", "t", "CREATE INDEX i ON t (a)")],
    )
    with pytest.raises(ValueError, match="rowids go with the rows of a table"):
        db.append("t", [np.arange(3)])
    with pytest.raises(ValueError, match="rowids go with the rows of a table"):
        db.append("i", [np.arange(3), np.arange(3)], np.arange(3))
    with pytest.raises(ValueError, match="2 rowids for 3 rows"):
        db.append("t", [np.arange(3)], np.arange(2))
    db.abandon()


def test_streamed_index_of_every_length_up_to_several_leaves(tmp_path):
    """Every way the last leaf can end: room left, full, or full with one more entry waiting after it."""
    path = tmp_path / "db.sqlite"
    for n in range(1, 300):
        db = sqliteimage.DatabaseFile(
            str(path), [("table", "t", "t", "CREATE TABLE t (a)"), ("index", "i", "t", "CREATE INDEX i ON t (a)")], 512
        )
        values = np.arange(n, dtype=np.int64) * 1000003
        db.append("t", [values], np.arange(1, n + 1))
        db.append("i", [values, np.arange(1, n + 1)])
        db.close()
        found = sqlite3.connect(path)
        assert found.execute("PRAGMA integrity_check").fetchall() == [("ok",)], n
        assert found.execute("SELECT a FROM t INDEXED BY i WHERE a >= 0 ORDER BY a").fetchall() == [
            (v,) for v in values.tolist()
        ]
        found.close()
