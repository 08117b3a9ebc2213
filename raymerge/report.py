"""What happened in a run: counts in/out, rows dropped and why, bytes, what each storage cost, timings.

The same object is printed to the terminal, returned by `raymerge.run`, and saved (without
credentials) as `raymerge.json` beside a folder output.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO


@dataclass
class InputReport:
    name: str
    path: str
    rows_in: int = 0
    rows_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, n: int = 1) -> None:
        if n:
            self.dropped[reason] = self.dropped.get(reason, 0) + n


@dataclass
class Report:
    kind: str
    operation: str
    output: str
    unit: str = "rows"
    status: str = "ok"
    inputs: list[InputReport] = field(default_factory=list)
    rows_out: int = 0
    bytes_written: int = 0
    files_written: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    # per storage ("local", "s3://bucket at endpoint"): bytes read, written, copied server-side, and requests by
    # type (`raymerge.usage`); in raymerge.json, up to the start of the commit
    storage: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def rows_in(self) -> int:
        return sum(i.rows_in for i in self.inputs)

    @property
    def dropped(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for i in self.inputs:
            for reason, n in i.dropped.items():
                total[reason] = total.get(reason, 0) + n
        return total

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rows_in"] = self.rows_in
        return d

    def render(self) -> str:
        u = self.unit
        lines = [f"raymerge {self.kind} {self.operation}: {self.status}", f"  output: {self.output}"]
        width = max([len(i.name) for i in self.inputs] + [5])
        for i in self.inputs:
            drop = ", ".join(f"{n} {reason}" for reason, n in sorted(i.dropped.items()))
            lines.append(
                f"  {i.name:<{width}}  {i.rows_in:>10,} {u} in  {i.rows_out:>10,} used"
                + (f"  dropped: {drop}" if drop else "")
            )
        lines.append(f"  {'total':<{width}}  {self.rows_in:>10,} {u} in  {self.rows_out:>10,} {u} out")
        for key, value in self.details.items():
            if isinstance(value, (str, int, float, bool)):
                lines.append(f"  {key}: {value:,}" if isinstance(value, int) else f"  {key}: {value}")
        if self.bytes_written:
            lines.append(f"  written: {human_bytes(self.bytes_written)} in {len(self.files_written)} files")
        lines += [f"  {line}" for line in render_storage(self.storage)]
        for w in self.warnings:
            lines.append(f"  warning: {w}")
        if self.timings:
            lines.append("  time: " + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items()))
        return "\n".join(lines)


def render_storage(storage: dict[str, dict[str, Any]]) -> list[str]:
    """One line per storage: bytes moved, then requests by type, most frequent first."""
    lines = []
    for name, entry in storage.items():
        requests = entry.get("requests", {})
        moved = ", ".join(
            f"{label} {human_bytes(entry.get(key, 0))}"
            for key, label in (("bytes_read", "read"), ("bytes_written", "written"), ("bytes_copied", "copied"))
            if requests or entry.get(key)  # an object store shows all three, copied 0 included
        )
        line = f"storage {name}: {moved}"
        if requests:
            by_type = ", ".join(f"{op} {n:,}" for op, n in sorted(requests.items(), key=lambda kv: (-kv[1], kv[0])))
            line += f"; {sum(requests.values()):,} requests ({by_type})"
        if entry.get("retries"):
            line += f", {entry['retries']:,} retried"
        lines.append(line)
    return lines


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class Progress:
    """Progress lines on stderr, one per step, with the time since the run started."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            elapsed = time.perf_counter() - self.start
            print(f"[{elapsed:7.1f}s] {message}", file=self.stream, flush=True)


class TaskCounter:
    """Done/total, bytes, rate and ETA for one batch of tasks, on the run's progress display."""

    def __init__(self, progress: Progress, label: str, total: int, total_bytes: int = 0) -> None:
        self.progress, self.label, self.total, self.total_bytes = progress, label, total, total_bytes
        self.done = 0
        self.bytes = 0
        self.start = time.perf_counter()
        self.shown = self.start

    def advance(self, n_bytes: int = 0) -> None:
        self.done += 1
        self.bytes += n_bytes
        now = time.perf_counter()
        if self.done == self.total or (now - self.shown >= 2.0 and self.done % max(1, self.total // 20) == 0):
            self.shown = now
            self.progress(self.line(now))

    def line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        text = f"{self.label}: {self.done}/{self.total} tasks"
        if self.total_bytes:
            text += f", {human_bytes(self.bytes)} of {human_bytes(self.total_bytes)} ({human_bytes(self.bytes / elapsed)}/s)"
        if 0 < self.done < self.total:
            text += f", about {(self.total - self.done) * elapsed / self.done:.0f}s left"
        return text


class Timer:
    """Named wall-clock phases for the report."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def phase(self, name: str) -> _Phase:
        return _Phase(self.timings, name)


class _Phase:
    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - self.t0
