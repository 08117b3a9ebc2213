"""Conversations as the ecosystem writes them: role spellings, case and spaces, system and tool turns, either
turn shape in either column, an input's own `roles:`, and drops counted by what really happened."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from raymerge import api
from raymerge.errors import InvalidInput
from raymerge.families import load_config
from raymerge.text.columns import (
    DEFAULT_ROLES,
    DROP_EMPTY,
    DROP_NO_PAIR,
    DROP_NO_TURNS,
    choose_mapping,
    normalise,
    role_table,
)
from raymerge.text.samples import write_json_array, write_jsonl


def _convert(rows: list[dict], roles=DEFAULT_ROLES):
    table = pa.Table.from_pylist(rows)
    done = normalise(table, choose_mapping(table.schema, "t", roles=roles))
    return done.pairs.to_pylist(), done


def _turns(*pairs: tuple[str, str], key=("from", "value")) -> list[dict]:
    return [{key[0]: role, key[1]: text} for role, text in pairs]


@pytest.mark.parametrize(
    "user,assistant",
    [
        ("human", "gpt"),  # ShareGPT / FastChat
        ("user", "assistant"),  # TRL's from/value example, exports of OpenAI chats
        ("Human", "GPT"),  # mixed case
        (" user ", "Assistant\n"),  # stray spaces
        ("prompter", "assistant"),  # OpenAssistant (axolotl's guanaco)
        ("input", "output"),  # Unsloth's aliases
    ],
)
def test_sharegpt_role_spellings(user, assistant):
    rows = [{"conversations": _turns(("system", "be kind"), (user, "q"), (assistant, "a"))}]
    pairs, done = _convert(rows)
    assert pairs == [{"input": "q", "output": "a"}] and done.dropped == {} and done.unknown_roles == {}


@pytest.mark.parametrize("column", ["messages", "conversations"])
@pytest.mark.parametrize("keys", [("role", "content"), ("from", "value")])
def test_either_turn_shape_in_either_column(column, keys):
    rows = [{column: _turns(("USER", "q1"), ("Assistant", "a1"), ("user", "q2"), ("gpt", "a2"), key=keys)}]
    assert _convert(rows)[0] == [{"input": "q1", "output": "a1"}, {"input": "q2", "output": "a2"}]


def test_system_turns_are_skipped_and_tool_turns_break_a_pair():
    rows = [
        {
            "messages": _turns(
                ("system", "s"),
                ("user", "q1"),
                ("developer", "be brief"),  # OpenAI's newer name for system
                ("assistant", "a1"),
                ("user", "what is the weather?"),
                ("tool", "sunny"),
                ("assistant", "It is sunny."),
                key=("role", "content"),
            )
        }
    ]
    pairs, done = _convert(rows)
    assert pairs == [{"input": "q1", "output": "a1"}]
    assert done.unknown_roles == {}  # tool turns are no mistake


def test_drops_say_why():
    rows = [
        {"conversations": _turns(("human", "q"), ("gpt", "a"))},
        {"conversations": _turns(("gpt", "hello"), ("human", "bye"))},  # no user -> assistant pair
        {"conversations": _turns(("human", "q"), ("gpt", "   "))},  # a pair whose answer is empty
        {"conversations": []},
        {"conversations": None},
        {"conversations": _turns(("bot", "hi"), ("moderator", "x"), ("bot", "again"))},
    ]
    pairs, done = _convert(rows)
    assert pairs == [{"input": "q", "output": "a"}]
    assert done.rows_in == 6
    assert done.dropped == {DROP_NO_PAIR: 2, DROP_EMPTY: 1, DROP_NO_TURNS: 2}
    assert done.unknown_roles == {"bot": 2, "moderator": 1}


def test_role_table_overrides_one_side_and_takes_its_names_from_the_others():
    table = role_table(user=["Questioner", "input"], assistant=None)
    assert table[0] == ("questioner", "input")
    assert "input" not in table[1] + table[2] and table[1] == DEFAULT_ROLES[1]
    rows = [{"conversations": _turns(("questioner", "q"), ("gpt", "a"), ("human", "ignored"), ("gpt", "b"))}]
    pairs, done = _convert(rows, table)
    assert pairs == [{"input": "q", "output": "a"}]
    assert done.unknown_roles == {"human": 1} and done.dropped == {}


def test_a_run_with_role_variants_counts_and_warns_truthfully(ray_address, tmp_path):
    sharegpt = write_json_array(
        tmp_path / "sharegpt.json",
        [
            {"id": "a", "conversations": _turns(("user", "q0"), ("assistant", "a0"))},
            {"id": "b", "conversations": _turns(("Human", "q1"), ("GPT", "a1"))},
            {"id": "c", "conversations": _turns(("human", "q2"), ("bot", "a2"))},
        ],
    )
    chat = write_jsonl(
        tmp_path / "chat.jsonl",
        pa.Table.from_pylist(
            [{"messages": _turns(("system", "s"), ("User", "m0"), ("Assistant", "r0"), key=("role", "content"))}]
        ),
    )
    cfg = {
        "kind": "text",
        "operation": "concat",
        "inputs": [{"path": str(sharegpt)}, {"path": str(chat)}],
        "output": {"path": str(tmp_path / "o.jsonl")},
    }
    report = api.run(cfg)
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["input"] for r in rows] == ["q0", "q1", "m0"]
    assert report.inputs[0].dropped == {DROP_NO_PAIR: 1}
    assert report.details["mapping"] == {
        "sharegpt.json": "conversations (user -> assistant turns)",
        "chat.jsonl": "messages (user -> assistant turns)",
    }
    assert report.warnings == [
        "sharegpt.json: turns with roles that are neither user, assistant, system nor tool were not paired: "
        "'bot' (1 turns); name them with inputs[0].roles"
    ]

    cfg["inputs"][0]["roles"] = {"assistant": ["assistant", "gpt", "bot"]}
    cfg["output"]["overwrite"] = True
    report = api.run(cfg)
    assert report.warnings == [] and report.inputs[0].dropped == {}
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["input"] for r in rows] == ["q0", "q1", "q2", "m0"] and rows[2]["output"] == "a2"
    mapping = "conversations (user/human/input/prompter -> assistant/gpt/bot turns)"
    assert report.details["mapping"]["sharegpt.json"] == mapping


@pytest.mark.parametrize(
    "roles,message",
    [
        ({"user": ["a"], "assistant": ["A "]}, r"role 'A ' is given for both user and assistant"),
        ({}, r"give user, assistant or system role names"),
        ({"user": [" "]}, r"user: an empty role name"),
        ({"usr": ["a"]}, r"inputs\[0\]\.roles\.usr: unknown key"),
    ],
)
def test_bad_roles_are_refused_with_the_key(roles, message, tmp_path):
    cfg = {
        "kind": "text",
        "operation": "concat",
        "inputs": [{"path": "x.jsonl", "roles": roles}],
        "output": {"path": str(tmp_path / "o.jsonl")},
    }
    with pytest.raises(InvalidInput, match=message):
        load_config(cfg)
