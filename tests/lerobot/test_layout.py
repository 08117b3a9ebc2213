"""Where output episodes and videos go, on plain values: whole source files are kept whole when they can be."""

from __future__ import annotations

import numpy as np

from raymerge.lerobot.arrays import Interned
from raymerge.lerobot.layout import Sizes, camera_spans, plan_layout, whole_file_runs
from raymerge.lerobot.selection import SelectedEpisodes
from raymerge.lerobot.source_meta import Episodes

KEY = "observation.images.cam0"
MB = 1024**2


def source(video: list[tuple[str, float, float]], owned: bool = False) -> Episodes:
    """Episodes 0.. of one source with their video (file, start, end); 10 frames each, one data file."""
    n = len(video)
    files = ["data.parquet", *dict.fromkeys(f for f, _, _ in video)]
    return Episodes(
        index=np.arange(n, dtype=np.int64),
        length=np.full(n, 10, dtype=np.int64),
        tasks=np.zeros(n, dtype=np.int32),
        task_sets=[("t",)],
        data_file=np.zeros(n, dtype=np.int32),
        video_file={KEY: np.array([files.index(f) for f, _, _ in video], dtype=np.int32)},
        start_s={KEY: np.array([a for _, a, _ in video])},
        end_s={KEY: np.array([b for _, _, b in video])},
        files=files,
        whole_files=owned,
    )


# source 0: f0 holds episodes 0, 1; f1 holds 2, 3 (40 MB each). source 1: g0 holds 0, 1, 2 (10 MB each).
EPISODES = {
    0: source([("f0", 0, 1), ("f0", 1, 2), ("f1", 0, 1), ("f1", 1, 2.5)]),
    1: source([("g0", i, i + 1) for i in range(3)]),
}
SIZES = {
    0: Sizes(np.full(4, 1000.0), {KEY: np.full(4, 40.0 * MB)}),
    1: Sizes(np.full(3, 1000.0), {KEY: np.full(3, 10.0 * MB)}),
}
S0 = [(0, r) for r in range(4)]
S1 = [(1, r) for r in range(3)]


def selected(picks: list[tuple[int, int]]) -> SelectedEpisodes:
    return SelectedEpisodes(
        np.array([s for s, _ in picks], dtype=np.int32), np.array([r for _, r in picks], dtype=np.int64)
    )


def layout(picks: list[tuple[int, int]], cap_mb: float, version: str = "v3.0"):
    return plan_layout(
        selected(picks),
        EPISODES,
        SIZES,
        {0: ["t"], 1: ["t"]},
        version,
        [KEY],
        data_files_size_in_mb=100,
        video_files_size_in_mb=cap_mb,
        chunks_size=1000,
    )


def run_list(picks: list[tuple[int, int]]) -> list[tuple[int, int, bool]]:
    found = whole_file_runs(camera_spans(selected(picks), EPISODES, SIZES, KEY, Interned()))
    return list(zip(found.first.tolist(), found.end.tolist(), found.whole.tolist(), strict=True))


def test_whole_files_are_runs_and_partial_or_reordered_ones_are_not():
    assert run_list(S0 + S1) == [(0, 2, True), (2, 4, True), (4, 7, True)]
    assert run_list(S0[1:] + S1[:2]) == [(0, 1, False), (1, 3, True), (3, 4, False), (4, 5, False)]
    assert run_list([S0[1], S0[0]]) == [(0, 1, False), (1, 2, False)]


def test_a_whole_file_alone_in_an_output_file_is_copied_with_its_episodes_in_place():
    out = layout(S0 + S1, cap_mb=80)
    copies = [job for job in out.video_jobs if job.is_copy]
    assert [job.runs[0].path for job in copies] == ["f0", "f1", "g0"]  # f1 + g0 would pass the 80 MB cap
    run = copies[1].runs[0]
    assert list(run.episodes) == [2, 3] and run.offsets.tolist() == [0.0, 1.0] and run.durations.tolist() == [1.0, 1.5]
    assert out.video_slots[KEY].tolist() == [[0, 0]] * 2 + [[0, 1]] * 2 + [[0, 2]] * 3


def test_small_whole_files_share_a_file_by_remux_and_big_ones_are_cut_to_the_cap():
    shared = layout([*S1, S0[0], S0[1]], cap_mb=200)
    assert len(shared.video_jobs) == 1 and not shared.video_jobs[0].is_copy
    assert [r.path for r in shared.video_jobs[0].runs] == ["g0", "f0"]
    cut = layout(S0[:2], cap_mb=50)  # f0 is 80 MB: its episodes go one per file
    assert [(len(j.runs), j.is_copy) for j in cut.video_jobs] == [(1, False), (1, False)]


def test_indices_frames_and_data_runs_follow_the_output_order():
    out = layout([S1[2], *S0[:2], S1[0]], cap_mb=200)
    assert out.frame_from.tolist() == [0, 10, 20, 30] and out.frames == 40
    [job] = out.data_jobs
    runs = [(r.source, r.src_episodes.tolist(), r.first, r.frame_from) for r in job.runs]
    assert runs == [(1, [2], 0, 0), (0, [0, 1], 1, 10), (1, [0], 3, 30)]
    assert out.tasks == ["t"] and out.task_maps == {0: [0], 1: [0]}


def test_v21_output_gives_every_episode_its_own_files():
    out = layout(S0[:2] + S1[:1], cap_mb=200, version="v2.1")
    assert out.data_slots.tolist() == [[0, 0], [0, 1], [0, 2]]
    assert [j.path for j in out.data_jobs] == [f"data/chunk-000/episode_{i:06d}.parquet" for i in range(3)]
    assert [(len(j.runs), j.is_copy) for j in out.video_jobs] == [(1, False)] * 3  # v3.0 sources are cut
