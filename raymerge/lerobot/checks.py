"""Compatibility rules between datasets, as plain functions returning what differs."""

from __future__ import annotations

from typing import Any

# Converted v3.0 datasets carry an `fps` key in every non-video feature; native ones do not.
_IGNORED_FEATURE_KEYS = {"fps", "info"}


def _shape(value: Any) -> tuple | None:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def feature_mismatches(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> list[str]:
    """What differs between two feature dicts in keys, dtypes, shapes and names (video streams are probed)."""
    out = []
    only_a = [k for k in a if k not in b]
    only_b = [k for k in b if k not in a]
    if only_a:
        out.append(f"features {only_a} missing")
    if only_b:
        out.append(f"extra features {only_b}")
    for key in a:
        if key not in b:
            continue
        fa = {k: v for k, v in a[key].items() if k not in _IGNORED_FEATURE_KEYS}
        fb = {k: v for k, v in b[key].items() if k not in _IGNORED_FEATURE_KEYS}
        for attr in ("dtype", "shape", "names"):
            va, vb = fa.get(attr), fb.get(attr)
            if attr == "shape":
                va, vb = _shape(va), _shape(vb)
            if va != vb:
                out.append(f"feature {key!r} {attr} {vb!r} != {va!r}")
    return out


def dataset_mismatches(first: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """Differences between two info.json dicts that forbid a merge (values shown as `other != first`)."""
    out = []
    if other.get("fps") != first.get("fps"):
        out.append(f"fps {other.get('fps')} != {first.get('fps')}")
    if other.get("robot_type") != first.get("robot_type"):
        out.append(f"robot_type {other.get('robot_type')!r} != {first.get('robot_type')!r}")
    return out + feature_mismatches(first["features"], other["features"])
