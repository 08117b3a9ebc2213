"""`kind: text`: instruction/pair datasets merged with Hugging Face `datasets` semantics.

Sources (HF folders, JSON/JSONL/Parquet/CSV, FineFoundry SQLite sessions) are normalised to
`input`/`output` pairs, combined by concat or interleave in HF's exact order, and written as
JSONL, JSON, Parquet or a new FineFoundry session, plus optional exports.
"""

from raymerge.text.config import Config
from raymerge.text.info import detect, inspect, preview, preview_config
from raymerge.text.pipeline import execute, plan

__all__ = ["Config", "detect", "execute", "inspect", "plan", "preview", "preview_config"]
