"""Where output videos come from, on plain values: whole source files are kept whole when they can be."""

from __future__ import annotations

from raymerge.lerobot.layout import Sized, plan_layout, units
from raymerge.lerobot.meta import SourceEpisode, VideoSpan

KEY = "observation.images.cam0"
MB = 1024**2


def episode(source: int, index: int, path: str, start: float, end: float, mb: float) -> Sized:
    ep = SourceEpisode(source, index, 10, ("t",), "data.parquet", {KEY: VideoSpan(path, start, end)})
    return Sized(ep, 1000.0, {KEY: mb * MB})


# source 0: f0 holds episodes 0, 1; f1 holds 2, 3. source 1: g0 holds 0, 1, 2.
FILES = {(0, "f0"): 2, (0, "f1"): 2, (1, "g0"): 3}
S0 = [episode(0, 0, "f0", 0, 1, 40), episode(0, 1, "f0", 1, 2, 40), episode(0, 2, "f1", 0, 1, 40)]
S0 += [episode(0, 3, "f1", 1, 2.5, 40)]
S1 = [episode(1, i, "g0", i, i + 1, 10) for i in range(3)]


def layout(chosen: list[Sized], cap_mb: float):
    return plan_layout(
        chosen,
        {0: ["t"], 1: ["t"]},
        "v3.0",
        [KEY],
        data_files_size_in_mb=100,
        video_files_size_in_mb=cap_mb,
        chunks_size=1000,
        file_episodes=FILES,
    )


def test_whole_files_are_units_and_partial_or_reordered_ones_are_not():
    assert units(S0 + S1, KEY, FILES) == [(0, 2, True), (2, 4, True), (4, 7, True)]
    assert units(S0[1:] + S1[:2], KEY, FILES) == [(0, 1, False), (1, 3, True), (3, 4, False), (4, 5, False)]
    assert units([S0[1], S0[0]], KEY, FILES) == [(0, 1, False), (1, 2, False)]


def test_a_whole_file_alone_in_an_output_file_is_copied_with_its_episodes_in_place():
    out = layout(S0 + S1, cap_mb=80)
    copies = [job for job in out.video_jobs if job.is_copy]
    assert [job.runs[0].path for job in copies] == ["f0", "f1", "g0"]  # f1 + g0 would pass the 80 MB cap
    assert copies[1].runs[0].episodes == [(2, 0.0, 1.0), (3, 1.0, 1.5)]
    assert [e.videos[KEY] for e in out.episodes] == [(0, 0)] * 2 + [(0, 1)] * 2 + [(0, 2)] * 3


def test_small_whole_files_share_a_file_by_remux_and_big_ones_are_cut_to_the_cap():
    shared = layout([*S1, S0[0], S0[1]], cap_mb=200)
    assert len(shared.video_jobs) == 1 and not shared.video_jobs[0].is_copy
    assert [r.path for r in shared.video_jobs[0].runs] == ["g0", "f0"]
    cut = layout(S0[:2], cap_mb=50)  # f0 is 80 MB: its episodes go one per file
    assert [(len(j.runs), j.is_copy) for j in cut.video_jobs] == [(1, False), (1, False)]
