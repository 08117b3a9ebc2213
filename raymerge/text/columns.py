"""Column auto-mapping: every source becomes `input`/`output` string pairs.

The mapping is chosen once per source from its schema (on the driver) and applied per chunk with
pyarrow compute (in tasks), so no Python loop runs over rows. Conversations are paired
vectorised over the flattened turn lists; role names are matched stripped and case-insensitively
against a table of the spellings trainers accept (or an input's own `roles:`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymerge.errors import InvalidInput

PAIR_SCHEMA = pa.schema([("input", pa.string()), ("output", pa.string())])
RoleTable = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]  # user, assistant, system names

# Whole pairs, in order of preference: a source matching an earlier pair uses it.
PAIRS = [
    ("input", "output"),
    ("prompt", "completion"),
    ("prompt", "response"),
    ("question", "answer"),
    ("query", "response"),
    ("instruction", "response"),
]
CONVERSATION_COLUMNS = ("messages", "conversations")
TURN_KEYS = (("role", "content"), ("from", "value"))  # OpenAI style, ShareGPT style; either in either column
# The role names the widely used trainers and converters accept by default (the table is in docs/text.md).
DEFAULT_ROLES: RoleTable = (
    ("user", "human", "input", "prompter"),
    ("assistant", "gpt", "output"),
    ("system", "developer"),
)
# Turns that are neither side of a pair but no mistake either: tool calls and their results.
OTHER_ROLES = ("tool", "function", "function_call", "observation", "ipython")
USER, ASSISTANT, SYSTEM, OTHER = 0, 1, 2, 3

DROP_EMPTY = "empty input or output"
DROP_NO_PAIR = "conversation without a user -> assistant turn pair"
DROP_NO_TURNS = "conversation without turns"


def role_table(
    user: Sequence[str] | None = None, assistant: Sequence[str] | None = None, system: Sequence[str] | None = None
) -> RoleTable:
    """The default table with the sides an input names replaced; a name given for one side leaves the others."""
    given = [user, assistant, system]
    sides = [
        tuple(dict.fromkeys(n.strip().lower() for n in names)) if names is not None else default
        for names, default in zip(given, DEFAULT_ROLES, strict=True)
    ]
    claimed = [set(side) if names is not None else set() for side, names in zip(sides, given, strict=True)]
    return tuple(  # type: ignore[return-value]
        tuple(n for n in side if not any(n in c for j, c in enumerate(claimed) if j != i))
        for i, side in enumerate(sides)
    )


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
    roles: RoleTable = DEFAULT_ROLES

    def describe(self) -> str:
        """The mapping as the report and `inspect` show it, so a user can see which columns were used."""
        if self.kind == "conversation":
            if self.roles == DEFAULT_ROLES:
                return f"{self.input} (user -> assistant turns)"
            return f"{self.input} ({'/'.join(self.roles[USER])} -> {'/'.join(self.roles[ASSISTANT])} turns)"
        if self.kind == "alpaca":
            return f"{self.input} + {self.extra} -> {self.output}"
        if self.kind == "context":
            return f"{self.extra} + {self.input} -> {self.output}"
        return f"{self.input} -> {self.output}"

    def columns(self) -> list[str]:
        """The source columns the mapping reads: all a columnar reader needs to load."""
        return [c for c in (self.input, self.output, self.extra) if c]


@dataclass
class Normalised:
    """A chunk as pairs, with what the report needs: rows in, rows dropped by reason, and the roles of turns
    that were neither user, assistant, system nor tool (so that a user can map them with `roles:`)."""

    pairs: pa.Table
    rows_in: int
    dropped: dict[str, int] = field(default_factory=dict)
    unknown_roles: dict[str, int] = field(default_factory=dict)


def _scalar(t: pa.DataType) -> bool:
    return not (pa.types.is_nested(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t))


def choose_mapping(
    schema: pa.Schema,
    where: str,
    input_column: str | None = None,
    output_column: str | None = None,
    roles: RoleTable = DEFAULT_ROLES,
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
    for col in CONVERSATION_COLUMNS:
        if col in names:
            real = names[col]
            keys = _turn_keys(schema.field(real).type)
            if keys is None:
                raise InvalidInput(
                    f"{where}: column {real!r} is {schema.field(real).type}, expected a list of "
                    f"{{role, content}} or {{from, value}} turns; columns found: {found}"
                )
            return Mapping("conversation", real, role_key=keys[0], text_key=keys[1], roles=roles)

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


def _turn_keys(t: pa.DataType) -> tuple[str, str] | None:
    """The (role, text) keys of a list of turn structs, or None when the column is no such list."""
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not pa.types.is_struct(t.value_type):
        return None
    fields = {t.value_type.field(i).name for i in range(t.value_type.num_fields)}
    return next(((r, c) for r, c in TURN_KEYS if {r, c} <= fields), None)


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


def normalise(table: pa.Table, mapping: Mapping) -> Normalised:
    """Pairs with both sides non-empty: a pair with an empty side teaches nothing, and the report says how many
    were dropped and why."""
    result = Normalised(PAIR_SCHEMA.empty_table(), table.num_rows)
    if mapping.kind == "conversation":
        inp, out = _conversation_pairs(table.column(mapping.input), mapping, result)
    else:
        inp = _text(table.column(mapping.input))
        out = _text(table.column(mapping.output))
        if mapping.kind == "alpaca" and mapping.extra:
            inp = _join(inp, _text(table.column(mapping.extra)))
        elif mapping.kind == "context":
            inp = pc.if_else(pc.equal(inp, ""), inp, _join(_text(table.column(mapping.extra)), inp))
    keep = pc.and_(pc.not_equal(inp, ""), pc.not_equal(out, ""))
    result.pairs = pa.Table.from_arrays([pc.filter(inp, keep), pc.filter(out, keep)], schema=PAIR_SCHEMA)
    _count(result.dropped, DROP_EMPTY, len(inp) - result.pairs.num_rows)
    return result


def _count(counts: dict[str, int], key: str, n: int) -> None:
    if n:
        counts[key] = counts.get(key, 0) + n


def _conversation_pairs(col: pa.ChunkedArray, m: Mapping, result: Normalised) -> tuple[pa.Array, pa.Array]:
    """Each user turn followed by an assistant turn in the same conversation is a pair; system turns between
    them are skipped. Conversations yielding no pair are counted in `result`, by why."""
    lists = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    parents = pc.list_parent_indices(lists).to_numpy()
    turns = pc.list_flatten(lists)
    roles = pc.utf8_lower(_text(pc.struct_field(turns, m.role_key)))
    codes = np.full(len(turns), OTHER, np.int8)
    for code, names in ((SYSTEM, m.roles[SYSTEM]), (ASSISTANT, m.roles[ASSISTANT]), (USER, m.roles[USER])):
        codes[pc.is_in(roles, value_set=pa.array(names, pa.string())).to_numpy(zero_copy_only=False)] = code
    kept = np.flatnonzero(codes != SYSTEM)
    c, p = codes[kept], parents[kept]
    starts = np.flatnonzero((c[:-1] == USER) & (c[1:] == ASSISTANT) & (p[:-1] == p[1:])) if len(c) > 1 else kept[:0]
    texts = _text(pc.struct_field(turns, m.text_key))
    inp = texts.take(pa.array(kept[starts], pa.int64()))
    out = texts.take(pa.array(kept[starts + 1], pa.int64()))

    has_turns = np.bincount(parents, minlength=len(lists)) > 0
    has_pair = np.zeros(len(lists), bool)
    has_pair[p[starts]] = True
    _count(result.dropped, DROP_NO_TURNS, int((~has_turns).sum()))
    _count(result.dropped, DROP_NO_PAIR, int((has_turns & ~has_pair).sum()))
    unknown = (codes == OTHER) & ~pc.is_in(roles, value_set=pa.array(OTHER_ROLES)).to_numpy(zero_copy_only=False)
    if unknown.any():
        counts = pc.value_counts(roles.filter(pa.array(unknown)))
        for item in counts.to_pylist():
            result.unknown_roles[item["values"] or "(empty)"] = item["counts"]
    return inp, out
