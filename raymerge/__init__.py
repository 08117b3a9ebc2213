"""Merge, join and split machine-learning datasets at any scale on Ray."""

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
