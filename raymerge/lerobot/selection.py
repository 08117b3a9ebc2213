"""Which source episodes go where: `episodes:` selections and split assignments, on plain index lists, and
the selected episodes as columns."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from raymerge.errors import InvalidInput


def _describe(available: list[int]) -> str:
    if not available:
        return "the dataset has no episodes"
    return f"the dataset has {len(available)} episodes ({available[0]}..{available[-1]})"


def select(spec: str | int | list[int] | None, available: list[int], where: str) -> list[int]:
    """Episode indices chosen by "a:b" (end exclusive, ends optional), "7" or [3, 1, 4], in that order."""
    if spec is None:
        return list(available)
    present = set(available)
    if isinstance(spec, list):
        chosen = spec
        seen: set[int] = set()
        for ep in chosen:
            if ep in seen:
                raise InvalidInput(f"{where}: episode {ep} is listed twice")
            seen.add(ep)
    else:
        text = str(spec).strip()
        try:
            if ":" in text:
                lo_s, hi_s = text.split(":", 1)
                lo = int(lo_s) if lo_s.strip() else 0
                hi = int(hi_s) if hi_s.strip() else (available[-1] + 1 if available else 0)
                chosen = list(range(lo, hi))
                if lo < 0 or hi < lo:
                    raise ValueError
                if not chosen:
                    raise InvalidInput(f"{where}: episodes {text!r} selects no episode")
            else:
                chosen = [int(text)]
        except ValueError:
            raise InvalidInput(f'{where}: episodes {spec!r} is not a range like "10:50" or a list of indices') from None
    missing = [ep for ep in chosen if ep not in present]
    if missing:
        raise InvalidInput(
            f"{where}: episodes {spec!r} is out of range: episode {missing[0]} does not exist; {_describe(available)}"
        )
    return list(chosen)


def split_fractions(
    available: list[int], fractions: dict[str, float], seed: int | None, where: str
) -> dict[str, list[int]]:
    """Cut the episodes (shuffled first when a seed is given) by fractions; each part in index order."""
    for name, frac in fractions.items():
        if not frac > 0:
            raise InvalidInput(f"{where}.fractions.{name}: must be > 0, got {frac}")
    total = sum(fractions.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise InvalidInput(f"{where}.fractions: must sum to 1, got {total:g}")
    order = list(available)
    if seed is not None:
        order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    bounds = np.round(np.cumsum([0.0, *fractions.values()]) * len(order)).astype(int)
    bounds[-1] = len(order)
    out = {}
    for i, (name, frac) in enumerate(fractions.items()):
        part = sorted(order[bounds[i] : bounds[i + 1]])
        if not part:
            raise InvalidInput(f"{where}.fractions.{name}: split would be empty ({frac:g} of {len(order)} episodes)")
        out[name] = part
    return out


def split_lists(available: list[int], lists: dict[str, str | list[int]], where: str) -> dict[str, list[int]]:
    """Explicit episodes per split; an episode in two splits is an error."""
    out: dict[str, list[int]] = {}
    owner: dict[int, str] = {}
    for name, spec in lists.items():
        chosen = select(spec, available, f"{where}.episodes.{name}")
        for ep in chosen:
            if ep in owner:
                raise InvalidInput(f"{where}.episodes: episode {ep} is in both {owner[ep]!r} and {name!r}")
            owner[ep] = name
        out[name] = chosen
    return out


def unassigned(available: list[int], parts: dict[str, list[int]]) -> list[int]:
    """The episodes no split takes, in index order (reported, not written)."""
    used = {ep for part in parts.values() for ep in part}
    return [ep for ep in available if ep not in used]


@dataclass
class SelectedEpisodes:
    """Source episodes in output order: each one's source position and row in that source's `Episodes`."""

    source: np.ndarray  # (E,) int32
    row: np.ndarray  # (E,) int64

    def __len__(self) -> int:
        return len(self.row)

    @classmethod
    def concat(cls, parts: list[SelectedEpisodes]) -> SelectedEpisodes:
        """The parts one after the other."""
        return cls(
            np.concatenate([p.source for p in parts] or [np.zeros(0, np.int32)]),
            np.concatenate([p.row for p in parts] or [np.zeros(0, np.int64)]),
        )

    @classmethod
    def of(cls, source: int, rows: np.ndarray) -> SelectedEpisodes:
        """Rows of one source, in the order given."""
        return cls(np.full(len(rows), source, dtype=np.int32), np.asarray(rows, dtype=np.int64))

    def rows_by_source(self) -> dict[int, np.ndarray]:
        """The rows of each source some output uses, sorted."""
        return {pos: np.unique(self.row[self.source == pos]) for pos in np.unique(self.source).tolist()}
