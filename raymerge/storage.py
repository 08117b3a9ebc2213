"""One I/O layer over fsspec: URLs to filesystems, and staged output with an atomic commit.

On local disk output is written to a hidden sibling of the target and renamed into place at the end.
On S3 it is written once, straight to the final keys, as multipart uploads completed only at the commit,
with `raymerge.json` removed first and written last (`s3commit.PendingOutput`). Either way a failed,
cancelled or killed run never leaves a half dataset that looks complete, and never loses the old output
before the commit.

Importing this module makes `s3://` resolve to `objectstore.S3FileSystem` (s3fs with its requests
counted), in the driver and in every Ray worker that unpickles one of its filesystems.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import posixpath
import secrets
import shutil
import time
from typing import IO, TYPE_CHECKING, Any

import fsspec
from fsspec import AbstractFileSystem

from raymerge.errors import InvalidInput, RunFailed

if TYPE_CHECKING:
    from raymerge.s3commit import PartUpload, PendingOutput

MANIFEST = "raymerge.json"
S3_PROTOCOLS = ("s3", "s3a")


def _register_s3() -> None:
    """`s3://` is raymerge's metered s3fs; replace plain s3fs if something loaded it first."""
    for proto in S3_PROTOCOLS:
        if proto in fsspec.registry:
            from raymerge.objectstore import S3FileSystem

            fsspec.register_implementation(proto, S3FileSystem, clobber=True)
        else:
            fsspec.register_implementation(proto, "raymerge.objectstore.S3FileSystem", clobber=True)


_register_s3()


def resolve(url: str, storage_options: dict[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """An fsspec filesystem and the path inside it; `s3://b/k` and `./local` alike."""
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        if hasattr(fs, "connect"):  # s3fs takes unknown options at first use; check them here instead
            fs.connect()
    except (ImportError, ValueError, TypeError) as e:
        raise InvalidInput(f"{url}: cannot open this location: {e}") from None
    if is_local(fs):
        path = os.path.abspath(path)
    return fs, path.rstrip("/") or "/"


def is_local(fs: AbstractFileSystem) -> bool:
    return "file" in _protocols(fs)


def is_s3(fs: AbstractFileSystem) -> bool:
    return any(p in S3_PROTOCOLS for p in _protocols(fs))


def _protocols(fs: AbstractFileSystem) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)


def url(fs: AbstractFileSystem, path: str) -> str:
    """A path as the user would write it, for messages and reports."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def join(path: str, *parts: str) -> str:
    return posixpath.join(path, *parts)


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/"))


def parent(path: str) -> str:
    return posixpath.dirname(path.rstrip("/"))


def exists(fs: AbstractFileSystem, path: str) -> bool:
    try:
        return fs.exists(path)
    except (OSError, ValueError):
        return False


def fingerprint(fs: AbstractFileSystem, path: str) -> dict[str, Any]:
    """Cheap identity of an input from its listing (names, sizes, mtimes/etags), never its bytes."""
    entries = fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}
    digest = hashlib.sha256()
    total = 0
    for name in sorted(entries):
        info = entries[name]
        size = int(info.get("size") or 0)
        total += size
        stamp = info.get("ETag") or info.get("mtime") or info.get("LastModified") or ""
        digest.update(f"{name[len(path) :]}\0{size}\0{stamp}\n".encode())
    return {
        "path": url(fs, path),
        "files": len(entries),
        "bytes": total,
        "listing_sha256": digest.hexdigest(),
    }


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"


class Staging:
    """The hidden place a run writes to, and the commit that makes it the output.

    `is_file`: the output is one file (the family writes `self.path`); otherwise a folder (the
    family writes below `self.path`). `allow_existing`: the family updates an existing target
    itself (e.g. adds a session to a database), so its presence is not a conflict. `scratch` is a
    folder beside staging for a run's intermediate files, never part of the output: removed with it.

    On S3, `self.fs` turns writes below `self.path` (or to `self.path`, for a single file) into pending
    uploads of the final keys (`s3commit.PendingS3FileSystem`): nothing appears under the staging
    prefix, and a file written there cannot be read back before the commit. Intermediate files belong in
    `scratch` (or, for a single-file output, elsewhere in `self.dir`), which are written as usual.
    """

    def __init__(
        self,
        target_url: str,
        storage_options: dict[str, Any] | None = None,
        *,
        overwrite: bool = False,
        is_file: bool = False,
        allow_existing: bool = False,
        run_id: str | None = None,
    ) -> None:
        self.fs, self.target = resolve(target_url, storage_options)
        self.target_url = url(self.fs, self.target)
        self.overwrite = overwrite
        self.is_file = is_file
        self.allow_existing = allow_existing
        self.run_id = run_id or new_run_id()
        name = basename(self.target)
        self._prefix = join(parent(self.target), f".{name}.raymerge")
        self.dir = f"{self._prefix}-staging-{self.run_id}"
        self.path = join(self.dir, name) if is_file else self.dir
        self.scratch = f"{self._prefix}-scratch-{self.run_id}"
        self._lock: IO | None = None
        self._remote: PendingOutput | None = None
        self._opened = False
        self.committed = False
        if is_s3(self.fs):
            self._remote = self._pending_output()

    def _pending_output(self) -> PendingOutput:
        from raymerge.s3commit import PendingOutput, PendingS3FileSystem

        spec = {
            "staging": self.path,
            "target": self.target,
            "records": f"{self._prefix}-pending-{self.run_id}",
            "single": self.is_file,
        }
        self.fs = PendingS3FileSystem(*self.fs.storage_args, **self.fs.storage_options, raymerge_pending=spec)
        return PendingOutput(self.fs, self.target, f"{self._prefix}-", MANIFEST)

    # -- before writing -------------------------------------------------------------------
    def check(self) -> None:
        """Refuse an existing output unless overwriting; raise before anything is written."""
        if self.target == "/" or self.target == parent(self.target):
            raise InvalidInput(f"output {self.target_url}: refusing to write to a filesystem root")
        if not is_local(self.fs) and self._remote is None:
            raise InvalidInput(f"output {self.target_url}: outputs go to a local path or to s3://")
        if self._remote is not None:
            if "/" not in self.target:
                raise InvalidInput(f"output {self.target_url}: refusing to write to a bucket root")
            is_file, is_dir = self._remote.existing()
        else:
            present = exists(self.fs, self.target)
            is_dir = present and self.fs.isdir(self.target)
            is_file = present and not is_dir
        if (is_file or is_dir) and not (self.overwrite or self.allow_existing):
            raise InvalidInput(
                f"output {self.target_url} already exists; set output.overwrite: true or pass --overwrite to replace it"
            )
        if self.is_file and is_dir:
            raise InvalidInput(f"output {self.target_url} is a folder, but this output is a single file")

    def open(self) -> Staging:
        self.check()
        self._acquire_lock()
        self._opened = True
        self._recover_and_clean()
        if self._remote is None:
            self.fs.makedirs(self.dir, exist_ok=True)
        else:
            self._remote.begin()
        return self

    def _acquire_lock(self) -> None:
        if not is_local(self.fs):
            return
        import fcntl

        os.makedirs(parent(self.target), exist_ok=True)
        lock_path = f"{self._prefix}.lock"
        while True:
            f = open(lock_path, "a+")  # noqa: SIM115 - held for the whole run
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                raise InvalidInput(
                    f"output {self.target_url} is being written by another raymerge run (lock {lock_path})"
                ) from None
            # The lock file may have been removed by the run that held it just before we locked it.
            if os.path.exists(lock_path) and os.stat(lock_path).st_ino == os.fstat(f.fileno()).st_ino:
                self._lock = f
                return
            f.close()

    def _release_lock(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._lock.name)
            self._lock.close()
            self._lock = None

    def _siblings(self, kind: str) -> list[str]:
        try:
            names = self.fs.ls(parent(self.target), detail=False)
        except FileNotFoundError:
            return []
        mark = f"{basename(self._prefix)}-{kind}-"
        return [n.rstrip("/") for n in names if basename(n).startswith(mark)]

    def _recover_and_clean(self) -> None:
        """Undo what a killed run left: restore a replaced output that was never committed, drop staging;
        on S3, abort its uploads and delete its pending, staging and scratch prefixes."""
        if self._remote is not None:
            self._remote.clean()
            return
        for old in self._siblings("old"):
            if not exists(self.fs, self.target):
                self.fs.mv(old, self.target, recursive=True)
            else:
                self.fs.rm(old, recursive=True)
        for stale in self._siblings("staging") + self._siblings("scratch"):
            # Best effort: a killed run's last tasks may still be writing there; a later run retries.
            with contextlib.suppress(OSError):
                self.fs.rm(stale, recursive=True)

    def part_upload(self, path: str) -> PartUpload | None:
        """On S3, an upload of the output file `path` whose numbered parts tasks send themselves (see
        `s3commit.PartUpload`), for a file cut into blocks: no block is stored twice. None on local disk,
        where the blocks are files to join."""
        return self._remote.fs.part_upload(path) if self._remote is not None else None

    # -- after writing --------------------------------------------------------------------
    def written_bytes(self) -> int:
        """Bytes of the output's files (without the manifest, written at the commit)."""
        if self._remote is not None:
            return self._remote.written_bytes()
        entries = self.fs.find(self.dir, detail=True)
        return sum(int(i.get("size") or 0) for i in entries.values())

    def commit(self, manifest: dict[str, Any] | None = None) -> None:
        """Make the staged output the output; the manifest is the last thing written."""
        try:
            if self._remote is not None:
                self._remote.commit(manifest if not self.is_file else None)
            elif self.is_file:
                os.replace(self.path, self.target)
                shutil.rmtree(self.dir, ignore_errors=True)
            else:
                self._commit_local_dir(manifest)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise RunFailed(f"output {self.target_url}: no space left on device while committing") from None
            raise
        self.committed = True
        if self._remote is None:
            self._drop_scratch()
        self.close()

    def _commit_local_dir(self, manifest: dict[str, Any] | None) -> None:
        if manifest is not None:
            _write_json_durably(join(self.dir, MANIFEST), manifest)
        if os.path.exists(self.target):
            old = f"{self._prefix}-old-{self.run_id}"
            os.rename(self.target, old)
            os.rename(self.dir, self.target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.dir, self.target)

    def abort(self) -> None:
        """Remove everything this run staged; the previous output (or nothing) stays."""
        if self._remote is not None:
            if self._opened and not self.committed:
                self._opened = False
                with contextlib.suppress(Exception):
                    self._remote.clean()
            self.close()
            return
        if not self.committed:
            with contextlib.suppress(Exception):
                if exists(self.fs, self.dir):
                    self.fs.rm(self.dir, recursive=True)
        self._drop_scratch()
        self.close()

    def _drop_scratch(self) -> None:
        with contextlib.suppress(Exception):
            if exists(self.fs, self.scratch):
                self.fs.rm(self.scratch, recursive=True)

    def close(self) -> None:
        self._release_lock()

    def __enter__(self) -> Staging:
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self.committed:
            self.abort()


def _write_json_durably(path: str, data: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
