"""`kind: webdataset`: key joins, concat, blend and reshard of WebDataset shards, written Energon-ready."""

from raymerge.webdataset.config import Config
from raymerge.webdataset.describe import detect, inspect, preview
from raymerge.webdataset.planner import WdsPlan, execute, plan, preview_config

__all__ = ["Config", "WdsPlan", "detect", "execute", "inspect", "plan", "preview", "preview_config"]
