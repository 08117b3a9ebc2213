"""Merge, join and split machine-learning datasets at any scale on Ray."""

import os

from raymerge.runtime import keep_freed_memory, share_threads

share_threads(os.environ)  # before anything loads polars (`runtime.share_threads`)
keep_freed_memory(os.environ)

from raymerge.api import inspect, plan, preview, run
from raymerge.errors import InvalidInput, RaymergeError, RunFailed
from raymerge.report import Report

__version__ = "0.1.0"

__all__ = [
    "InvalidInput",
    "RaymergeError",
    "Report",
    "RunFailed",
    "__version__",
    "inspect",
    "plan",
    "preview",
    "run",
]
