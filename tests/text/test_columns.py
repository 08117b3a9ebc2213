"""Column auto-mapping to input/output pairs."""

from __future__ import annotations

import pyarrow as pa
import pytest

from raymerge.errors import InvalidInput
from raymerge.text.columns import choose_mapping, normalise


def _pairs(rows: list[dict], **explicit) -> tuple[list[tuple[str, str]], int, int]:
    table = pa.Table.from_pylist(rows)
    done = normalise(table, choose_mapping(table.schema, "t", **explicit))
    pairs = list(zip(done.pairs["input"].to_pylist(), done.pairs["output"].to_pylist(), strict=True))
    return pairs, done.rows_in, sum(done.dropped.values())


@pytest.mark.parametrize(
    "a,b",
    [
        ("input", "output"),
        ("prompt", "completion"),
        ("prompt", "response"),
        ("question", "answer"),
        ("query", "response"),
        ("instruction", "response"),
        ("Prompt", "Completion"),
    ],
)
def test_known_pairs(a, b):
    assert _pairs([{a: " q ", b: "r\n", "id": 1}])[0] == [("q", "r")]


def test_alpaca_keeps_instruction_and_optional_input():
    rows = [
        {"instruction": "Translate", "input": "bonjour", "output": "hello"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
        {"instruction": "Say hi", "input": None, "output": "hi again"},
    ]
    assert _pairs(rows)[0] == [("Translate\nbonjour", "hello"), ("Say hi", "hi"), ("Say hi", "hi again")]


def test_context_question_answer():
    rows = [{"context": "Paris is in France.", "question": "Where is Paris?", "answer": "France"}]
    assert _pairs(rows)[0] == [("Paris is in France.\nWhere is Paris?", "France")]


def test_openai_messages_pair_consecutive_user_assistant_turns():
    rows = [
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "u1"},
                {"role": "assistant", "content": "a1"},
                {"role": "user", "content": "u2"},
                {"role": "assistant", "content": "a2"},
            ]
        },
        {"messages": [{"role": "assistant", "content": "lonely"}, {"role": "user", "content": "u3"}]},
        {"messages": [{"role": "user", "content": "u4"}, {"role": "assistant", "content": " a4 "}]},
    ]
    pairs, rows_in, dropped = _pairs(rows)
    assert pairs == [("u1", "a1"), ("u2", "a2"), ("u4", "a4")]
    assert (rows_in, dropped) == (3, 1)


def test_sharegpt_conversations():
    rows = [{"conversations": [{"from": "human", "value": "h"}, {"from": "gpt", "value": "g"}]}]
    assert _pairs(rows)[0] == [("h", "g")]


def test_preference_data_is_refused_unless_columns_given():
    rows = [{"prompt": "p", "chosen": "good", "rejected": "bad"}]
    with pytest.raises(InvalidInput, match=r"preference data.*columns found: prompt \(string\), chosen"):
        _pairs(rows)
    assert _pairs(rows, input_column="prompt", output_column="chosen")[0] == [("p", "good")]


def test_explicit_columns_win_over_auto_mapping():
    rows = [{"input": "i", "output": "o", "title": "t", "body": "b"}]
    assert _pairs(rows, input_column="title", output_column="body")[0] == [("t", "b")]


def test_empty_rows_dropped_and_counted_and_numbers_become_text():
    rows = [{"q": "a", "a": 1}, {"q": "  ", "a": 2}, {"q": "c", "a": None}]
    pairs, rows_in, dropped = _pairs(rows, input_column="q", output_column="a")
    assert pairs == [("a", "1")] and (rows_in, dropped) == (3, 2)


def test_list_columns_are_never_turned_into_repr():
    rows = [{"input": ["x", "y"], "output": "o"}]
    with pytest.raises(InvalidInput, match=r"cannot map columns.*columns found: input \(list<item: string>\)"):
        _pairs(rows)
    with pytest.raises(InvalidInput, match=r"column 'input' holds list<item: string>, not text"):
        _pairs(rows, input_column="input", output_column="output")


def test_unmappable_columns_are_listed():
    with pytest.raises(InvalidInput, match=r"columns found: text \(string\), label \(int64\)"):
        _pairs([{"text": "t", "label": 1}])
