"""How values cross between Ray tasks: polars frames travel as Arrow tables.

Ray pickles a polars DataFrame by serialising it (about 1 µs a row to store it and half that to load
it, every time a key table moves from one task to the next), while an Arrow table's buffers go to the
object store as they are and are mapped, not copied, by the task that reads them. The conversion both
ways shares the buffers. Values inside containers are left as they are: only a task's own arguments
and results (what the executor hands over) are converted.

Row ranges of one frame (`slices`) are cut from its Arrow table, not from the frame: polars converts a
slice's list-of-text columns from their whole buffers (~20 ms a slice of a 1M-row key table, the same
again for every slice), and an Arrow slice is pickled with its whole buffers too, so a slice is stored
as a compact Arrow stream of its own rows.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

SPARE_BYTES = 1 << 20  # buffers beyond what the rows use, up to which a table is stored as it is


class ArrowFrame:
    """A polars DataFrame on its way to another task, as the Arrow table of its columns."""

    __slots__ = ("table",)

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def __reduce__(self) -> tuple[Any, ...]:
        if self.is_sparse():  # a slice: its own rows only, stored out of band and read in place
            return (_from_stream, (pickle.PickleBuffer(_stream(self.table)),))
        return (ArrowFrame, (self.table,))

    def is_sparse(self) -> bool:
        """Whether the table's buffers hold much more than its rows (a slice of a larger table)."""
        return self.table.get_total_buffer_size() > 2 * self.table.nbytes + SPARE_BYTES


def _stream(table: pa.Table) -> pa.Buffer:
    """The table as an Arrow stream: only its own rows' bytes, whatever buffers it shares."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as stream:
        stream.write_table(table)
    return sink.getvalue()


def _from_stream(data: Any) -> ArrowFrame:
    """A stored slice (`ArrowFrame.__reduce__`), read in place from the buffer it was stored in."""
    import pyarrow as pa

    return ArrowFrame(pa.ipc.open_stream(pa.py_buffer(data)).read_all())


def slices(frame: pl.DataFrame, bounds: Sequence[tuple[int, int]]) -> list[ArrowFrame]:
    """The (first row, end row) ranges of `frame`, each as its own table (`unpack` makes it a frame)."""
    table = frame.to_arrow()
    return [ArrowFrame(table.slice(a, b - a)) for a, b in bounds]


def takes_frames_as_sent(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a task whose frame arguments arrive as they travel (an `ArrowFrame` on Ray, a DataFrame in this
    process), for it to take only the rows it uses (`rows`): a writer's ten thousand rows of a
    million-row chunk convert in well under a millisecond, the whole chunk in ~15 ms."""
    fn.frames_as_sent = True  # type: ignore[attr-defined]
    return fn


def wants_frames_as_sent(fn: Callable[..., Any]) -> bool:
    """Whether `fn` was marked with `takes_frames_as_sent`."""
    return bool(getattr(fn, "frames_as_sent", False))


def rows(value: pl.DataFrame | ArrowFrame, start: int, end: int) -> pl.DataFrame:
    """Rows [start, end) of a frame argument as sent (`takes_frames_as_sent`), as a frame of their own."""
    if isinstance(value, ArrowFrame):
        return unpack(ArrowFrame(value.table.slice(start, end - start)))
    return value.slice(start, end - start)


def column(value: pl.DataFrame | ArrowFrame, name: str) -> pl.Series:
    """One column of a frame argument as sent (`takes_frames_as_sent`), converting no other."""
    if isinstance(value, ArrowFrame):
        import polars as pl

        series = pl.from_arrow(value.table.column(name))
        assert isinstance(series, pl.Series)
        return series.alias(name)
    return value[name]


def pack(value: Any) -> Any:
    """A task's result or argument as it is stored: a DataFrame as its Arrow table, anything else as is.
    (Without polars loaded, nothing is a DataFrame: a run that uses none does not import it.)"""
    polars = sys.modules.get("polars")
    return ArrowFrame(value.to_arrow()) if polars is not None and isinstance(value, polars.DataFrame) else value


def unpack(value: Any) -> Any:
    """What `pack` (or `slices`) made, as the task or the caller uses it."""
    if isinstance(value, ArrowFrame):
        import polars as pl

        if value.is_sparse():  # a slice that never left this process: polars would convert whole buffers
            value = _from_stream(_stream(value.table))
        frame = pl.from_arrow(value.table)
        assert isinstance(frame, pl.DataFrame)
        return frame
    return value
