"""What each storage cost in this process: bytes read, written and server-side copied, and requests by type.

Object-store clients add to these counters as their requests go out (`objectstore` hooks every S3
client), so nothing else has to remember to count. Counters are per process: the executor hands a
Ray task's share back with its result, and a run adds those to what its driver counted itself.

A usage is a plain dict, so it pickles, sums and goes into JSON as it is:
`{storage: {"bytes_read": n, "bytes_written": n, "bytes_copied": n, "requests": {operation: n}, "retries": n}}`.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

Usage = dict[str, dict[str, Any]]

LOCAL = "local"
_FIELDS = ("bytes_read", "bytes_written", "bytes_copied", "retries")

_lock = threading.Lock()
_counts: Usage = {}


def _entry(usage: Usage, storage: str) -> dict[str, Any]:
    entry = usage.get(storage)
    if entry is None:
        entry = usage[storage] = {**dict.fromkeys(_FIELDS, 0), "requests": {}}
    return entry


def add(
    storage: str,
    request: str | None = None,
    *,
    read: int = 0,
    written: int = 0,
    copied: int = 0,
    retries: int = 0,
) -> None:
    """Count one request (by its operation name) and/or bytes against `storage` in this process."""
    with _lock:
        entry = _entry(_counts, storage)
        if request:
            entry["requests"][request] = entry["requests"].get(request, 0) + 1
        entry["bytes_read"] += read
        entry["bytes_written"] += written
        entry["bytes_copied"] += copied
        entry["retries"] += retries


def snapshot() -> Usage:
    """This process's counters so far."""
    with _lock:
        return copy.deepcopy(_counts)


def since(before: Usage) -> Usage:
    """What this process counted after `before` was taken; storages with nothing new are left out."""
    now = snapshot()
    out: Usage = {}
    for storage, entry in now.items():
        old = before.get(storage, {})
        diff = {f: entry[f] - old.get(f, 0) for f in _FIELDS}
        old_requests = old.get("requests", {})
        requests = {op: n - old_requests.get(op, 0) for op, n in entry["requests"].items()}
        requests = {op: n for op, n in requests.items() if n}
        if requests or any(diff.values()):
            out[storage] = {**diff, "requests": requests}
    return out


def merge(*usages: Usage) -> Usage:
    """The sum of several usages (the driver's and its tasks')."""
    out: Usage = {}
    for usage in usages:
        for storage, entry in usage.items():
            total = _entry(out, storage)
            for f in _FIELDS:
                total[f] += entry.get(f, 0)
            for op, n in entry.get("requests", {}).items():
                total["requests"][op] = total["requests"].get(op, 0) + n
    return {storage: out[storage] for storage in sorted(out)}


def requests_total(entry: dict[str, Any]) -> int:
    return sum(entry.get("requests", {}).values())
