"""Which cuts re-encode, predicted from a file's groups of pictures, against what the remux really does."""

from __future__ import annotations

import pytest

from raymerge.lerobot.video.cut import cut_reencodes
from raymerge.lerobot.video.probe import probe
from raymerge.lerobot.video.remux import Segment, concat
from tests.lerobot.video.util import ENCODERS, LOCAL, make


@pytest.mark.parametrize("encoder", ENCODERS)
def test_prediction_matches_the_remux(tmp_path, encoder):
    """Cuts on group boundaries are copied, cuts inside a group re-encode it: the plan's prediction says so
    before any video is written, for the same cuts `concat` makes."""
    src = make(tmp_path, "file.mp4", 30, 4, gop=10, codec=encoder)
    gops = probe(LOCAL, src, index=True).gops
    assert gops is not None and probe(LOCAL, src).gops is None  # only an indexing probe reads every packet
    cuts = [(1.3, 1.9), (2.0, 3.0), (1.0, 2.0), (0.0, 1.5), (0.5, 1.0)]
    placed = concat([Segment(LOCAL, src, a, b) for a, b in cuts], LOCAL, str(tmp_path / "out.mp4"))
    assert placed[0].reencoded and not placed[1].reencoded  # both cases occur
    assert [cut_reencodes(gops, a, b) for a, b in cuts] == [p.reencoded for p in placed]
