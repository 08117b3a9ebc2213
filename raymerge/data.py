"""Ray Data building blocks for raymerge's formats: readers that return a `ray.data.Dataset`, and Datasinks
for `Dataset.write_datasink`, so a Ray Data pipeline reads and writes what the CLI reads and writes.

| name | what |
| --- | --- |
| `read_text` | any source the text family reads, as `input`/`output` pairs (or whole rows) |
| `read_finefoundry` | one FineFoundry session's pairs |
| `FineFoundryDatasink` | a Dataset of pairs as a new session of a FineFoundry database |
| `read_webdataset_join` | the key join of WebDataset inputs, as joined samples (`__key__` + member bytes) |
| `EnergonDatasink` | samples as Energon-ready WebDataset shards (`.tar.idx`, `.nv-meta`, `index.sqlite`) |
| `LeRobotDatasink` | frames as a LeRobot v3.0 dataset (videos encoded with PyAV, exact stats) |

Each lives in its family's package (`raymerge.<family>.raydata`, the one module of a family that imports
Ray Data); this module names them and imports a family only when one of its names is used, so that
`import raymerge.data` costs no family's dependencies. `StagedOutput` is what every sink shares: it writes
into a hidden staging place and commits at the end, as the CLI does, so a failed pipeline leaves the
previous output (or nothing) and never a half dataset that looks complete.
"""

from __future__ import annotations

import importlib
import platform
import time
from typing import TYPE_CHECKING, Any

from raymerge import storage
from raymerge.errors import InvalidInput

if TYPE_CHECKING:
    from raymerge.executor import Executor
    from raymerge.lerobot.raydata import LeRobotDatasink
    from raymerge.text.raydata import FineFoundryDatasink, read_finefoundry, read_text
    from raymerge.webdataset.raydata import EnergonDatasink, read_webdataset_join

EXPORTS = {
    "read_text": "raymerge.text.raydata",
    "read_finefoundry": "raymerge.text.raydata",
    "FineFoundryDatasink": "raymerge.text.raydata",
    "read_webdataset_join": "raymerge.webdataset.raydata",
    "EnergonDatasink": "raymerge.webdataset.raydata",
    "LeRobotDatasink": "raymerge.lerobot.raydata",
}

__all__ = [
    "EnergonDatasink",
    "FineFoundryDatasink",
    "LeRobotDatasink",
    "StagedOutput",
    "read_finefoundry",
    "read_text",
    "read_webdataset_join",
]


def __getattr__(name: str) -> Any:
    """The family module of `name`, imported on first use."""
    module = EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'raymerge.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(EXPORTS))


def ray_executor() -> Executor:
    """The executor the blocks run their own tasks with (a join's plan, a sink's reduce): Ray's, on the
    session Ray Data uses (started here, as Ray Data would start it, when there is none)."""
    import ray

    from raymerge.executor import Executor

    if not ray.is_initialized():
        ray.init()
    return Executor.ray()


class StagedOutput:
    """The staging and commit of a Datasink's output, as the CLI stages a run's (`storage.Staging`).

    The target is checked when the sink is made (an existing output is refused unless `overwrite`), staging
    is opened when the first block arrives, `finish` (the sink's own reduce step, on the driver) writes the
    output into staging, and the commit puts it in place with `raymerge.json` last. A failure, in a write task
    or in `finish`, removes what was staged. Write tasks get a copy of the sink without the staging's lock.
    """

    def __init__(
        self,
        path: str,
        storage_options: dict[str, Any] | None = None,
        *,
        overwrite: bool = False,
        is_file: bool = False,
        allow_existing: bool = False,
    ) -> None:
        self._staging: storage.Staging | None = storage.Staging(
            path, storage_options, overwrite=overwrite, is_file=is_file, allow_existing=allow_existing
        )
        self._staging.check()
        self.target_url = self._staging.target_url
        self.fs = self._staging.fs  # where write tasks put their files (pending uploads on S3)
        self.scratch = self._staging.scratch  # intermediate files, never part of the output
        self.root = self._staging.path  # the staged output (its file, or its folder)
        self._opened = self._done = False
        self.report: Any = None  # the `raymerge.report.Report` of the commit, once done

    @property
    def staging(self) -> storage.Staging:
        if self._staging is None:
            raise RuntimeError("the staging of a sink exists only on the driver")
        return self._staging

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_staging"] = None  # holds the output's lock file: the driver's alone
        return state

    def _open(self) -> None:
        if self._done:
            raise InvalidInput(f"{type(self).__name__}: a sink writes once; make a new one for another write")
        if not self._opened:
            self.staging.open()
            self._opened = True

    def on_write_start(self, schema: Any = None) -> None:
        """Open staging (lock, recover what a killed run left) before the first write task runs."""
        self._open()

    def on_write_complete(self, write_result: Any) -> None:
        """Run the sink's reduce step into staging, then commit; abort on any failure."""
        try:
            self._open()
            started = time.perf_counter()
            report = self.finish(list(write_result.write_returns))
            report.timings["finish"] = time.perf_counter() - started
            report.bytes_written = self.staging.written_bytes()
            self.staging.commit(None if self.staging.is_file else self.manifest(report.to_dict()))
            self.report = report
        finally:
            self._done = True
            self.staging.abort()  # nothing left to do after a commit

    def on_write_failed(self, error: Exception) -> None:
        """Remove what was staged: the previous output (or nothing) stays."""
        self._done = True
        if self._staging is not None:
            self._staging.abort()

    def finish(self, results: list[Any]) -> Any:
        """The reduce step of the sink, on the driver: the write tasks' results to the output in staging;
        returns a `raymerge.report.Report`."""
        raise NotImplementedError

    def manifest(self, report: dict[str, Any]) -> dict[str, Any]:
        """`raymerge.json`: what wrote the output and what it holds (as the CLI's, without a config)."""
        import pyarrow
        import ray

        from raymerge import __version__

        return {
            "raymerge_version": __version__,
            "run_id": self.staging.run_id,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "written_by": f"raymerge.data.{type(self).__name__}",
            "report": report,
            "versions": {"python": platform.python_version(), "ray": ray.__version__, "pyarrow": pyarrow.__version__},
        }
