"""How values cross between Ray tasks: polars frames travel as Arrow tables.

Ray pickles a polars DataFrame by serialising it (about 1 µs a row to store it and half that to load
it, every time a key table moves from one task to the next), while an Arrow table's buffers go to the
object store as they are and are mapped, not copied, by the task that reads them. The conversion both
ways shares the buffers. Values inside containers are left as they are: only a task's own arguments
and results (what the executor hands over) are converted.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa


class ArrowFrame:
    """A polars DataFrame on its way to another task, as the Arrow table of its columns."""

    __slots__ = ("table",)

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def __reduce__(self) -> tuple[Any, ...]:
        return (ArrowFrame, (self.table,))


def pack(value: Any) -> Any:
    """A task's result or argument as it is stored: a DataFrame as its Arrow table, anything else as is.
    (Without polars loaded, nothing is a DataFrame: a run that uses none does not import it.)"""
    polars = sys.modules.get("polars")
    return ArrowFrame(value.to_arrow()) if polars is not None and isinstance(value, polars.DataFrame) else value


def unpack(value: Any) -> Any:
    """What `pack` stored, as the task or the caller uses it."""
    if isinstance(value, ArrowFrame):
        import polars as pl

        frame = pl.from_arrow(value.table)
        assert isinstance(frame, pl.DataFrame)
        return frame
    return value
