"""Which cuts of a source video `remux.concat` re-encodes, predicted from the file's groups of pictures, so
that a plan can say so before any video is written."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from raymerge.lerobot.video.probe import GopIndex


def cut_reencodes(index: GopIndex, start_s: float, end_s: float) -> bool:
    """Whether `concat` re-encodes part of the segment [start_s, end_s) of the file `index` describes.

    The rule of `remux._Track._copy_gops`, on the group index instead of packets: a group the segment keeps only part of
    (it starts before the cut, or ends after it with a frame decoded before the end but shown after it), or
    a first kept group whose keyframe is not its first frame shown (open GOP), is re-encoded.
    """
    tb, half = index.time_base, 1 / (2 * index.rate)
    first = math.ceil((Fraction(start_s) - half) / tb)
    end = math.ceil((Fraction(end_s) - half) / tb)
    key, low, high = index.groups.T
    touched = np.flatnonzero((high >= first) & (low < end))
    if not len(touched):
        return False
    if (low[touched] < first).any() or key[touched[0]] != low[touched[0]]:
        return True
    dts, pts = index.unsafe.T
    return bool((high[touched] >= end).any() and ((dts < end) & (end <= pts)).any())
