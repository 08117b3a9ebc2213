"""FineFoundry sessions named by what tells them apart (its scrapers leave names empty), listed by `inspect`,
named in errors, and chosen by id or name."""

from __future__ import annotations

import json
import sqlite3

import pytest

from raymerge import api
from raymerge.errors import InvalidInput
from raymerge.families import load_config
from raymerge.text.finefoundry import SCHEMA_SQL
from tests.helpers import assert_rejected


@pytest.fixture
def scraped(tmp_path):
    """A database as FineFoundry's scrapers leave it: unnamed sessions told apart by source and time."""
    db = tmp_path / "in" / "finefoundry.db"
    db.parent.mkdir()
    con = sqlite3.connect(db)
    con.executescript(SCHEMA_SQL)
    sessions = [
        (None, "reddit", "r/python", "2024-05-01 10:00:00", 4),
        (None, "stackexchange", "stackoverflow.com [sql]", "2024-05-02 11:30:00", 2),
        ("kept", "reddit", "r/rust", "2024-05-03 09:00:00", 1),
        ("kept", "huggingface", "org/dataset", "2024-05-04 09:00:00", 3),
    ]
    for sid, (name, source, details, created, n) in enumerate(sessions, start=1):
        con.execute(
            "INSERT INTO scrape_sessions (id, name, source, source_details, created_at, pair_count) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (sid, name, source, details, created, n),
        )
        con.executemany(
            "INSERT INTO scraped_pairs (session_id, input_text, output_text) VALUES (?, ?, ?)",
            [(sid, f"s{sid} question {i}", f"s{sid} answer {i}") for i in range(n)],
        )
    con.commit()
    con.close()
    return db


def test_inspect_lists_what_tells_sessions_apart(scraped):
    sessions = api.inspect(str(scraped))["sessions"]
    assert sessions[0] == {
        "id": 1,
        "name": None,
        "source": "reddit",
        "source_details": "r/python",
        "created_at": "2024-05-01 10:00:00",
        "pairs": 4,
    }
    assert [(s["id"], s["name"], s["pairs"]) for s in sessions] == [
        (1, None, 4),
        (2, None, 2),
        (3, "kept", 1),
        (4, "kept", 3),
    ]


def _cfg(db, session, output):
    return {
        "kind": "text",
        "operation": "concat",
        "inputs": [{"path": str(db), "session": session}],
        "output": {"path": str(output)},
    }


@pytest.mark.parametrize("session", [2, {"id": 2}])
def test_a_session_is_chosen_by_id(ray_address, scraped, tmp_path, session):
    api.run(_cfg(scraped, session, tmp_path / "o.jsonl"))
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["input"] for r in rows] == ["s2 question 0", "s2 question 1"]


def test_a_name_is_a_name_and_a_number_an_id(ray_address, scraped, tmp_path):
    output = tmp_path / "out" / "o.jsonl"
    message = r"no session named '2' \(to choose by id, write session: 2 as a number, or session: \{id: 2\}\)"
    assert_rejected(_cfg(scraped, "2", output), message, [scraped], output)
    assert_rejected(_cfg(scraped, 9, output), r"no session with id 9; sessions: 1: unnamed \(reddit", [scraped], output)


def test_errors_name_sessions_by_what_tells_them_apart(ray_address, scraped, tmp_path):
    output = tmp_path / "out" / "o.jsonl"
    listing = (
        r"1: unnamed \(reddit, r/python, created 2024-05-01 10:00:00, 4 pairs\); "
        r"2: unnamed \(stackexchange, stackoverflow.com \[sql\], created 2024-05-02 11:30:00, 2 pairs\); "
        r"3: 'kept' \(reddit, r/rust, created 2024-05-03 09:00:00, 1 pairs\)"
    )
    assert_rejected(
        _cfg(scraped, None, output),
        r"choose a session with session: ID \(or a name\); sessions: " + listing,
        [scraped],
        output,
    )
    message = r"2 sessions are named 'kept'; choose one with session: ID: 3: 'kept' \(reddit.*; 4: 'kept' \(huggingface"
    assert_rejected(_cfg(scraped, {"name": "kept"}, output), message, [scraped], output)


@pytest.mark.parametrize(
    "session,message",
    [
        ({"id": 1, "name": "x"}, r"inputs\[0\]\.session: Value error, expected \{id: N\} or \{name: X\}"),
        ({"nr": 1}, r"expected \{id: N\} or \{name: X\}, got \{'nr': 1\}"),
        ({"id": "one"}, r"got \{'id': 'one'\} \(Input should be a valid integer"),
    ],
)
def test_a_session_mapping_names_one_key(tmp_path, session, message):
    with pytest.raises(InvalidInput, match=message):
        load_config(_cfg(tmp_path / "x.db", session, tmp_path / "o.jsonl"))
