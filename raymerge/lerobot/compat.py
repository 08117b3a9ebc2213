"""What must agree between datasets merged into one, as plain functions returning what differs: the
info.json facts (fps, robot type, features, declared video codecs). Video streams themselves are compared
when probed (`video.probe.incompatibilities`)."""

from __future__ import annotations

from typing import Any

# Converted v3.0 datasets carry an `fps` key in every non-video feature; native ones do not.
_IGNORED_FEATURE_KEYS = {"fps", "info"}


def _shape(value: Any) -> tuple | None:
    """A shape as a tuple, whether JSON gave a list or not."""
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


def declared_codecs(features: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each video feature's codec as info.json declares it (`info.video.codec`), where it does."""
    out = {}
    for key, feature in features.items():
        info = feature.get("info")
        if feature.get("dtype") == "video" and isinstance(info, dict) and info.get("video.codec"):
            out[key] = str(info["video.codec"])
    return out


def codec_mismatches(first: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """Cameras whose declared codecs differ (`camera: codec other != first`), found before any video is
    probed; a camera either dataset does not declare is left to the probe."""
    a, b = declared_codecs(first["features"]), declared_codecs(other["features"])
    return [f"{key!r}: codec {b[key]} != {a[key]}" for key in a if key in b and a[key] != b[key]]
