"""LeRobot videos: mp4 files read, probed, remuxed, cut, encoded and decoded with PyAV, on any fsspec storage.

By concern: `mp4` (the `moov` box and sample table, read by raymerge itself), `io` (opening sources, writing
outputs, whole-file copies), `probe` (stream parameters and groups of pictures from the sample table),
`packets` (the packets of a segment, read once by byte range), `remux` (packet-copy concatenation with exact
timestamps, one frame per sample), `cut` (predicting which cuts re-encode), `encode` and `decode` (frames to
and from mp4), `write` (one output video file of a layout), `transcode` (one output file encoded from
images or re-encoded from videos, for `convert_image_to_video` and `reencode_videos`). Frames of a merged
video are the sources' packets (no decode, no re-encode) except where a segment starts or ends inside a group
of pictures.
"""
