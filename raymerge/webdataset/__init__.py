"""`kind: webdataset`: key joins, concat, blend and reshard of WebDataset shards, written Energon-ready."""

from __future__ import annotations

from raymerge.families import Family
from raymerge.webdataset import describe
from raymerge.webdataset import execute as writing
from raymerge.webdataset import plan as planning
from raymerge.webdataset.config import Config
from raymerge.webdataset.plan import WebDatasetPlan


class WebDataset:
    """The family as the core sees it (`raymerge.families.Family`); each step lives in its own module."""

    kind = "webdataset"
    config = Config
    detect = staticmethod(describe.detect)
    inspect = staticmethod(describe.inspect)
    preview = staticmethod(describe.preview)
    preview_config = staticmethod(describe.preview_config)
    check = staticmethod(planning.check)
    plan = staticmethod(planning.plan)
    execute = staticmethod(writing.execute)


FAMILY: Family[Config, WebDatasetPlan] = WebDataset()

__all__ = ["FAMILY", "Config", "WebDatasetPlan"]
