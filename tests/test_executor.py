"""The executor runs the same plain functions on Ray and in this process, with the same results."""

from __future__ import annotations

import os

import pytest

from raymerge.executor import IN_PROCESS_BELOW_BYTES, Executor, choose_mode
from raymerge.report import Progress


def double(x: int) -> int:
    return 2 * x


def split(x: int) -> tuple[int, int]:
    return x // 10, x % 10


def total(*values: int) -> int:
    return sum(values)


def refuse(x: int) -> int:
    raise ValueError(f"bad value {x}")


class Tally:
    def __init__(self, start: int) -> None:
        self.values = [start]

    def add(self, x: int) -> int:
        self.values.append(x)
        return len(self.values)

    def seen(self) -> list[int]:
        return self.values


@pytest.fixture(params=["ray", "in-process"])
def executor(request, ray_address):
    with Executor(request.param) as ex:
        yield ex


def test_handles_pass_between_calls_and_several_returns_split(executor):
    tens, ones = executor.submit(split, 42, num_returns=2)
    shared = executor.put(100)
    result = executor.submit(total, tens, ones, shared, executor.submit(double, 5))
    assert executor.get(result) == 4 + 2 + 100 + 10
    assert executor.get([tens, ones]) == [4, 2]


def test_map_keeps_call_order_or_reports_positions(executor):
    calls = [(i,) for i in range(25)]
    assert list(executor.map(double, calls, max_in_flight=3)) == [2 * i for i in range(25)]
    unordered = dict(executor.map(double, calls, ordered=False, max_in_flight=3))
    assert unordered == {i: 2 * i for i in range(25)}


def test_map_hands_the_other_returns_on_as_each_call_goes_out(executor):
    lines: list[str] = []
    executor.progress = Progress(enabled=True)
    executor.progress.stream = _Lines(lines)
    tally = executor.actor(Tally, 0)
    added = []

    def hand_on(i: int, handles: list) -> None:
        assert len(handles) == 2
        added.append(executor.call(tally, "add", handles[1]))

    calls = [(10 * i + 3,) for i in range(12)]
    tens = list(
        executor.map(split, calls, max_in_flight=4, num_returns=2, submitted=hand_on, label="splitting", sizes=[5] * 12)
    )
    assert tens == list(range(12))
    executor.get(added)
    assert executor.get(executor.call(tally, "seen")) == [0] + [3] * 12  # every call's second value, once
    assert any("splitting: 12/12 tasks" in line and "60 B of 60 B" in line for line in lines)


def frame_kinds(*frames: object) -> list[str]:
    return [type(f).__name__ for f in frames]


def test_a_task_can_take_frames_as_sent(executor):
    import polars as pl

    from raymerge import transport

    df = pl.DataFrame({"a": list(range(10)), "b": [[i] for i in range(10)]})
    as_sent = transport.takes_frames_as_sent(lambda *frames: [transport.rows(f, 2, 5)["a"].to_list() for f in frames])
    kinds = executor.get(executor.submit(frame_kinds, executor.put(df)))
    assert kinds == ["DataFrame"]  # unmarked tasks get frames
    got = executor.get(executor.submit(as_sent, executor.put(df)))
    assert got == [[2, 3, 4]]
    one_column = transport.takes_frames_as_sent(
        lambda f: (transport.column(f, "a").name, transport.column(f, "a").sum())
    )
    assert executor.get(executor.submit(one_column, executor.put(df))) == ("a", 45)
    kinds_as_sent = transport.takes_frames_as_sent(lambda *frames: frame_kinds(*frames))
    sent = executor.get(executor.submit(kinds_as_sent, executor.put(df)))
    assert sent == (["ArrowFrame"] if executor.is_ray else ["DataFrame"])


def test_as_completed_yields_every_position_with_progress(executor):
    lines: list[str] = []
    executor.progress = Progress(enabled=True)
    executor.progress.stream = _Lines(lines)
    handles = [executor.submit(double, i) for i in range(6)]
    got = dict(executor.as_completed(handles, label="doubling", sizes=[10] * 6))
    assert got == {i: 2 * i for i in range(6)}
    assert any("doubling: 6/6 tasks" in line and "60 B of 60 B" in line for line in lines)


def test_a_task_error_surfaces_at_get_with_its_message(executor):
    handle = executor.submit(refuse, 7)
    with pytest.raises(ValueError, match="bad value 7"):
        executor.get(handle)
    with pytest.raises(ValueError, match="bad value 3"):
        list(executor.map(refuse, [(3,)]))


def test_actor_calls_run_in_submission_order(executor):
    tally = executor.actor(Tally, 1)
    counts = [executor.call(tally, "add", i) for i in range(2, 6)]
    assert executor.get(counts) == [2, 3, 4, 5]
    assert executor.get(executor.call(tally, "seen")) == [1, 2, 3, 4, 5]


def test_cpus():
    assert Executor.in_process().cpus() == 1


def test_auto_chooses_by_size_and_running_ray(monkeypatch, ray_address):
    monkeypatch.delenv("RAYMERGE_EXECUTOR", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert choose_mode("auto", 10, None) == "ray"  # the suite's Ray is running: it costs nothing more
    assert choose_mode("in-process", 10**12, None) == "in-process"
    assert choose_mode("ray", 10, None) == "ray"
    monkeypatch.setenv("RAYMERGE_EXECUTOR", "in-process")
    assert choose_mode("auto", 10**12, None) == "in-process"
    monkeypatch.setenv("RAYMERGE_EXECUTOR", "sideways")
    with pytest.raises(ValueError, match="RAYMERGE_EXECUTOR='sideways'"):
        choose_mode("auto", 10, None)


def test_auto_without_ray_running_goes_by_input_size():
    """In a process where Ray never started: small inputs stay in it, large ones go to Ray."""
    import subprocess
    import sys

    code = (
        "from raymerge.executor import choose_mode as c;"
        f"print(c('auto', 1000, None), c('auto', {IN_PROCESS_BELOW_BYTES}, None), c('auto', 1000, 'auto'))"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("RAYMERGE_EXECUTOR", "RAY_ADDRESS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["in-process", "ray", "ray"]


class _Lines:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def write(self, text: str) -> None:
        if text.strip():
            self.lines.append(text)

    def flush(self) -> None:
        pass


def frame_sum(df):
    import polars as pl

    assert isinstance(df, pl.DataFrame)  # a task gets the frame back, not its Arrow table
    return df.with_columns((pl.col("a") * 2).alias("b"))


def test_polars_frames_cross_between_calls_unchanged(executor):
    import polars as pl

    df = pl.DataFrame({"a": [1, 2, None], "s": ["x", None, "z"], "l": [[b"1"], [], None]})
    doubled = executor.submit(frame_sum, executor.put(df[1:]))  # a slice, in and out
    twice = executor.submit(frame_sum, doubled)
    got = executor.get(twice)
    assert isinstance(got, pl.DataFrame) and got.schema == {**df.schema, "b": pl.Int64}
    assert got.to_dicts() == [{"a": 2, "s": None, "l": [], "b": 4}, {"a": None, "s": "z", "l": None, "b": None}]
    assert executor.get([doubled])[0].equals(got)


def polars_threads() -> tuple[str | None, int]:
    import os

    import polars as pl

    return os.environ.get("OMP_NUM_THREADS"), pl.thread_pool_size()


def test_polars_in_a_ray_task_uses_the_threads_ray_gives_the_task(ray_address):
    """Ray tells each worker its share of the cores in OMP_NUM_THREADS; polars takes the same, not every core."""
    with Executor("ray") as ex:
        share, threads = ex.get(ex.submit(polars_threads))
    assert share is not None
    assert threads == int(share)


@pytest.mark.parametrize(
    ("environ", "threads"),
    [({"OMP_NUM_THREADS": "1"}, "1"), ({"OMP_NUM_THREADS": "1", "POLARS_MAX_THREADS": "2"}, "2"), ({}, None)],
)
def test_polars_threads_follow_the_process_share_unless_set(environ, threads):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "POLARS_MAX_THREADS")} | environ

    def pool(code: str) -> list[str]:
        return subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout.split()

    setting, size = pool(
        "import os, raymerge, polars as pl; print(os.environ.get('POLARS_MAX_THREADS'), pl.thread_pool_size())"
    )
    (own,) = pool("import polars as pl; print(pl.thread_pool_size())")  # polars' own choice in the same environment
    assert setting == str(threads)
    assert int(size) == (int(threads) if threads else int(own))


def allocator_settings() -> tuple[str | None, str | None]:
    import polars  # noqa: F401  (loaded: its allocator settings are final)

    return os.environ.get("POLARS_MAX_THREADS"), os.environ.get("_RJEM_MALLOC_CONF")


def test_ray_workers_size_polars_and_keep_its_freed_pages(ray_address):
    executor = Executor.ray()
    threads, conf = executor.get(executor.submit(allocator_settings))
    assert threads == "1"  # one core per task: one polars thread
    assert conf is not None and conf.endswith("dirty_decay_ms:-1,muzzy_decay_ms:-1")  # after polars' own, so it wins


def test_freed_pages_are_kept_only_in_processes_told_their_share_and_never_against_ones_own_decay():
    from raymerge.runtime import keep_freed_memory

    keep = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
    cases = {  # a worker's inherited value -> what polars is told
        "": keep,
        "dirty_decay_ms:500,muzzy_decay_ms:1000": keep,  # polars' own, from a driver that had loaded it
        "dirty_decay_ms:500,muzzy_decay_ms:1000,narenas:2": "narenas:2," + keep,
        "narenas:2,dirty_decay_ms:2000": "narenas:2,dirty_decay_ms:2000",  # one's own decay wins
    }
    for inherited, told in cases.items():
        worker = {"OMP_NUM_THREADS": "1"} | ({"_RJEM_MALLOC_CONF": inherited} if inherited else {})
        keep_freed_memory(worker)
        assert worker["_RJEM_MALLOC_CONF"] == told, inherited
    driver: dict[str, str] = {}
    keep_freed_memory(driver)
    assert driver == {}
