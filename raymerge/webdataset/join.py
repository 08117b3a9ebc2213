"""The key join of one hash bucket: the primary decides which samples exist and their order.

Each bucket holds every row whose key hashes to it, from every input, so a bucket joins on its own;
no task ever sees all keys. Secondaries with `nonmatch: skip` drop the sample, `none` keep it
without that input's members, `error` count the key as missing (the plan fails before writing).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

MEMBER_COLUMNS = ("names", "srcs", "offsets", "sizes")
MISSING_EXAMPLES = 10


@dataclass
class JoinStats:
    """Per secondary: how many primary keys matched and which did not (the first few in primary order)."""

    matched: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    missing_examples: list[list[tuple[int, str]]] = field(default_factory=list)
    used: list[int] = field(default_factory=list)
    rows_out: int = 0


def join_bucket(
    primary: pl.DataFrame, secondaries: list[pl.DataFrame], nonmatch: list[str]
) -> tuple[pl.DataFrame, JoinStats]:
    """Left-join each secondary onto the primary by exact key; members appended in input order.

    The member lists are concatenated once, after the skipped samples are dropped.
    """
    stats = JoinStats()
    out = primary.with_columns(pl.lit(True).alias("_keep"))
    for i, (sec, mode) in enumerate(zip(secondaries, nonmatch, strict=True)):
        right = sec.select("key", *(pl.col(c).alias(f"{c}_{i}") for c in (*MEMBER_COLUMNS, "nbytes")))
        out = out.join(right, on="key", how="left", maintain_order="left")
        hit = pl.col(f"nbytes_{i}").is_not_null()
        missing = out.filter(~hit).select("order", "key")
        stats.matched.append(out.height - missing.height)
        stats.missing.append(missing.height)
        stats.missing_examples.append(list(missing.bottom_k(MISSING_EXAMPLES, by="order").sort("order").iter_rows()))
        out = out.with_columns(
            (pl.col("_keep") & hit).alias("_keep") if mode == "skip" else pl.col("_keep"), hit.alias(f"_hit_{i}")
        )
    n = len(secondaries)
    out = out.filter(pl.col("_keep")).with_columns(
        *(pl.concat_list(c, *(pl.col(f"{c}_{i}").fill_null([]) for i in range(n))).alias(c) for c in MEMBER_COLUMNS),
        pl.sum_horizontal("nbytes", *(pl.col(f"nbytes_{i}").fill_null(0) for i in range(n))).alias("nbytes"),
    )
    hits = [f"_hit_{i}" for i in range(n)]
    stats.used = [int(out[h].sum()) for h in hits]
    out = out.drop("_keep", *hits, *(f"{c}_{i}" for i in range(n) for c in (*MEMBER_COLUMNS, "nbytes")))
    stats.rows_out = out.height
    return out, stats
