"""LeRobot videos: mp4 files read, probed, remuxed, cut, encoded and decoded with PyAV, on any fsspec storage.

By concern: `io` (opening sources, writing outputs, whole-file copies), `probe` (stream parameters and
groups of pictures from headers), `remux` (packet-copy concatenation with exact timestamps), `cut` (predicting
which cuts re-encode), `encode` and `decode` (frames to and from mp4), `write` (one output video file of a
layout). Frames of a merged video are the sources' packets (no decode, no re-encode) except where a segment
starts or ends inside a group of pictures.
"""
