"""Column auto-mapping: every source becomes `input`/`output` string pairs.

The mapping is chosen once per source from its schema (on the driver) and applied per chunk with
pyarrow compute (in tasks), so no Python loop runs over rows. Conversations are paired
vectorised over the flattened message lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymerge.errors import InvalidInput

PAIR_SCHEMA = pa.schema([("input", pa.string()), ("output", pa.string())])

# Whole pairs, in order of preference: a source matching an earlier pair uses it.
PAIRS = [
    ("input", "output"),
    ("prompt", "completion"),
    ("prompt", "response"),
    ("question", "answer"),
    ("query", "response"),
    ("instruction", "response"),
]
CONVERSATIONS = {
    # column: (role key, text key, user role, assistant role)
    "messages": ("role", "content", "user", "assistant"),
    "conversations": ("from", "value", "human", "gpt"),
}


@dataclass(frozen=True)
class Mapping:
    """How one source's columns become pairs.

    kind: `pair` (input/output columns), `alpaca` (instruction + optional extra input column),
    `context` (context + question / answer), or `conversation` (a list of turns).
    """

    kind: str
    input: str
    output: str = ""
    extra: str = ""
    role_key: str = ""
    text_key: str = ""
    user_role: str = ""
    assistant_role: str = ""

    def describe(self) -> str:
        """The mapping as the report and `inspect` show it, so a user can see which columns were used."""
        if self.kind == "conversation":
            return f"{self.input} ({self.user_role} -> {self.assistant_role} turns)"
        if self.kind == "alpaca":
            return f"{self.input} + {self.extra} -> {self.output}"
        if self.kind == "context":
            return f"{self.extra} + {self.input} -> {self.output}"
        return f"{self.input} -> {self.output}"

    def columns(self) -> list[str]:
        """The source columns the mapping reads: all a columnar reader needs to load."""
        return [c for c in (self.input, self.output, self.extra) if c]


def _scalar(t: pa.DataType) -> bool:
    return not (pa.types.is_nested(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t))


def choose_mapping(
    schema: pa.Schema,
    where: str,
    input_column: str | None = None,
    output_column: str | None = None,
) -> Mapping:
    """Pick the mapping for a schema; raise with the columns found when none fits."""
    names = {n.lower(): n for n in schema.names}
    found = ", ".join(f"{n} ({schema.field(n).type})" for n in schema.names) or "none"
    if input_column is not None and output_column is not None:
        for col in (input_column, output_column):
            if col not in schema.names:
                raise InvalidInput(f"{where}: column {col!r} not found; columns found: {found}")
            if not _scalar(schema.field(col).type):
                raise InvalidInput(
                    f"{where}: column {col!r} holds {schema.field(col).type}, not text; columns found: {found}"
                )
        return Mapping("pair", input_column, output_column)

    if "chosen" in names and "rejected" in names:
        raise InvalidInput(
            f"{where}: this is preference data (chosen/rejected); say which columns to use with "
            f"input_column and output_column; columns found: {found}"
        )
    for col, (role, text, user, assistant) in CONVERSATIONS.items():
        if col in names:
            real = names[col]
            if not _is_turn_list(schema.field(real).type, role, text):
                raise InvalidInput(
                    f"{where}: column {real!r} is {schema.field(real).type}, expected a list of "
                    f"{{{role}, {text}}} turns; columns found: {found}"
                )
            return Mapping("conversation", real, role_key=role, text_key=text, user_role=user, assistant_role=assistant)

    def text_col(name: str) -> str | None:
        real = names.get(name)
        return real if real is not None and _scalar(schema.field(real).type) else None

    # alpaca and context+question first: their extra column would otherwise be lost to a plain pair
    if text_col("instruction") and text_col("output"):
        return Mapping("alpaca", text_col("instruction"), text_col("output"), extra=text_col("input") or "")  # type: ignore[arg-type]
    if text_col("context") and text_col("question") and text_col("answer"):
        return Mapping("context", text_col("question"), text_col("answer"), extra=text_col("context"))  # type: ignore[arg-type]
    for a, b in PAIRS:
        if text_col(a) and text_col(b):
            return Mapping("pair", text_col(a), text_col(b))  # type: ignore[arg-type]
    raise InvalidInput(
        f"{where}: cannot map columns to input/output; columns found: {found}. Expected a pair such as "
        "input/output, prompt/completion, question/answer, instruction(+input)/output, a messages or "
        "conversations list, or set input_column and output_column"
    )


def _is_turn_list(t: pa.DataType, role: str, text: str) -> bool:
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        return False
    item = t.value_type
    return pa.types.is_struct(item) and {role, text} <= {item.field(i).name for i in range(item.num_fields)}


def _text(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Stripped strings; nulls become empty strings (and so dropped)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string())
    arr = pc.utf8_trim_whitespace(arr)
    return pc.fill_null(arr, "").cast(pa.string())


def _join(first: pa.Array, second: pa.Array) -> pa.Array:
    """`first` alone when `second` is empty, else `first + "\\n" + second` (alpaca's optional input)."""
    joined = pc.binary_join_element_wise(first, second, "\n")
    return pc.if_else(pc.equal(second, ""), first, joined)


def normalise(table: pa.Table, mapping: Mapping) -> tuple[pa.Table, int, int]:
    """(pairs with both sides non-empty, rows in, rows dropped as empty): a pair with an empty side teaches
    nothing, and the report says how many were dropped."""
    if mapping.kind == "conversation":
        inp, out = _conversation_pairs(table.column(mapping.input), mapping)
    else:
        inp = _text(table.column(mapping.input))
        out = _text(table.column(mapping.output))
        if mapping.kind == "alpaca" and mapping.extra:
            inp = _join(inp, _text(table.column(mapping.extra)))
        elif mapping.kind == "context":
            inp = pc.if_else(pc.equal(inp, ""), inp, _join(_text(table.column(mapping.extra)), inp))
    keep = pc.and_(pc.not_equal(inp, ""), pc.not_equal(out, ""))
    pairs = pa.Table.from_arrays([pc.filter(inp, keep), pc.filter(out, keep)], schema=PAIR_SCHEMA)
    considered = len(inp)
    return pairs, table.num_rows, considered - pairs.num_rows


def _conversation_pairs(col: pa.ChunkedArray, m: Mapping) -> tuple[pa.Array, pa.Array]:
    """Each user turn directly followed by an assistant turn in the same conversation is a pair.

    Conversations without any such pair contribute one empty pair, so they are counted as dropped.
    """
    lists = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    parents = pc.list_parent_indices(lists).to_numpy()
    turns = pc.list_flatten(lists)
    roles = _text(pc.struct_field(turns, m.role_key)).to_numpy(zero_copy_only=False)
    texts = _text(pc.struct_field(turns, m.text_key))
    is_user = roles[:-1] == m.user_role
    is_reply = roles[1:] == m.assistant_role
    starts = np.flatnonzero(is_user & is_reply & (parents[:-1] == parents[1:])) if len(roles) > 1 else np.array([], int)
    inp = texts.take(pa.array(starts, pa.int64()))
    out = texts.take(pa.array(starts + 1, pa.int64()))
    # One empty placeholder per conversation that yielded nothing, so it shows as dropped.
    empty = np.setdiff1d(np.arange(len(lists)), parents[starts], assume_unique=False).size
    if empty:
        filler = pa.array([""] * empty, pa.string())
        inp = pa.concat_arrays([inp, filler])
        out = pa.concat_arrays([out, filler])
    return inp, out
