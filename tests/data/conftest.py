"""The Ray Data tests share the run's Ray session; each reads its Datasets in order, as a pipeline that cares
about order would (`preserve_order`), and restores Ray Data's settings afterwards."""

from __future__ import annotations

import pytest


@pytest.fixture
def ordered(ray_address):
    """Ray Data keeps block order (the setting a pipeline uses to write in the Dataset's order)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved = ctx.execution_options.preserve_order, ctx.enable_progress_bars
    ctx.execution_options.preserve_order, ctx.enable_progress_bars = True, False
    try:
        yield ctx
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved


def leftovers(target) -> list[str]:
    """Staging, scratch or lock files a sink left beside its target."""
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.raymerge"))
