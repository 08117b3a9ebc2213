"""The object-store commit protocol: pending multipart uploads to the final keys, completed at commit.

The commit protocol (`PendingOutput`), after Hadoop S3A's "magic" committer: a run's output files are
written once, straight to their final keys, as multipart uploads that are not completed. Each upload's
(key, upload id, parts, size) goes into a small pending record beside the output
(`.NAME.raymerge-pending-RUN/...`). The commit then removes the old `raymerge.json`, completes the
uploads in parallel (each key switches atomically from its old object to its new one; no payload is
copied), writes the new `raymerge.json`, and only then deletes the objects of the old output that the new
one did not replace. Until the commit starts, the old output is untouched: nothing of the new one is
visible. A failed run aborts its uploads; the next run to the same output aborts whatever a killed run
left (ListMultipartUploads) and removes its pending, staging and scratch prefixes. Object stores have no
locks: a run that starts while another writes the same output removes the other's pending uploads, and
the other then refuses to commit (its pending prefix lost its run mark) instead of committing part of
its output.

The families write as they would anywhere: `PendingS3FileSystem` (the `Staging.fs` of an s3 output)
turns every write under the staging folder (or onto the output's own keys) into a pending upload of the
final key, and pickles to Ray workers with that behaviour. A file written this way cannot be read back
before the commit.

One module of about 450 lines: the pending uploads and the commit that completes them share the record
format and change together.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import json
import mimetypes
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import s3fs
from fsspec.asyn import sync, sync_wrapper
from fsspec.callbacks import DEFAULT_CALLBACK

from raymerge.errors import RunFailed
from raymerge.objectstore import S3FileSystem, abort_uploads, bounded, delete_keys, list_objects, list_uploads

PART_BYTES = 50 * 2**20  # s3fs's block size: every part but the last must be >= 5 MiB
MAX_PART_BYTES = 5 * 2**30  # S3's largest part, also the largest range one UploadPartCopy may copy
MAX_PARTS = 10_000
RUN_MARK = ".run"  # in a run's pending prefix while the run is live
_CHECKSUMS = ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1", "ChecksumSHA256")


# -- pending uploads --------------------------------------------------------------------------------
@dataclass
class Pending:
    """One output file uploaded but not committed: what completing it needs."""

    path: str  # bucket/key of the final object
    upload_id: str | None  # None: an empty file, put at commit
    parts: list[dict[str, Any]]
    size: int

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__).encode()


class _Upload:
    """A multipart upload to a final key, started at its first part and never completed here."""

    def __init__(self, fs: PendingS3FileSystem, path: str) -> None:
        self.fs, self.path = fs, path
        self.bucket, self.key, _ = fs.split_path(path)
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self.size = 0

    async def _start(self) -> str:
        kind = mimetypes.guess_type(self.key)[0]
        extra = {"ContentType": kind} if kind else {}
        out = await self.fs._call_s3("create_multipart_upload", Bucket=self.bucket, Key=self.key, **extra)
        self.upload_id = out["UploadId"]
        return self.upload_id

    async def part(self, data: bytes | bytearray) -> None:
        if not data:
            return
        upload_id = self.upload_id or await self._start()
        n = len(self.parts) + 1
        out = await self.fs._call_s3(
            "upload_part", Bucket=self.bucket, Key=self.key, UploadId=upload_id, PartNumber=n, Body=data
        )
        self.parts.append({"PartNumber": n, "ETag": out["ETag"], **{c: out[c] for c in _CHECKSUMS if c in out}})
        self.size += len(data)

    async def copy_part(self, source: str, first: int, last: int) -> None:
        """Bytes first..last of another object as the next part, copied by the server."""
        upload_id = self.upload_id or await self._start()
        bucket, key, _ = self.fs.split_path(source)
        n = len(self.parts) + 1
        out = await self.fs._call_s3(
            "upload_part_copy",
            Bucket=self.bucket,
            Key=self.key,
            UploadId=upload_id,
            PartNumber=n,
            CopySource={"Bucket": bucket, "Key": key},
            CopySourceRange=f"bytes={first}-{last}",
        )
        result = out["CopyPartResult"]
        self.parts.append(
            {"PartNumber": n, "ETag": result["ETag"], **{c: result[c] for c in _CHECKSUMS if c in result}}
        )
        self.size += last - first + 1

    async def pend(self) -> None:
        """Record the upload for the commit; a second upload of the same key (a retried task) replaces it."""
        record = Pending(self.path, self.upload_id, self.parts, self.size)
        await self.fs._pipe_file(self.fs.record_path(self.path), record.to_json())

    async def abort(self) -> None:
        if self.upload_id is not None:
            with contextlib.suppress(Exception):
                await self.fs._call_s3(
                    "abort_multipart_upload", Bucket=self.bucket, Key=self.key, UploadId=self.upload_id
                )
            self.upload_id = None


class PendingFile(s3fs.core.S3File):
    """A file opened for writing under the staging region: its parts go to the final key's pending upload."""

    def __init__(self, fs: PendingS3FileSystem, path: str, block_size: int, **kwargs: Any) -> None:
        super().__init__(fs, path, "wb", block_size=block_size, **kwargs)
        self.upload = _Upload(fs, path)

    def _initiate_upload(self) -> None:
        """Started with the first part instead, so an empty file sends no upload at all."""

    def _upload_chunk(self, final: bool = False) -> bool:
        buffer: io.BytesIO = self.buffer  # type: ignore[has-type]  # set by fsspec's file
        buffer.seek(0)
        view = buffer.getbuffer()
        at, end = 0, len(view)
        while end - at >= (1 if final else self.blocksize):
            take = min(end - at, MAX_PART_BYTES if final else self.blocksize)
            sync(self.fs.loop, self.upload.part, bytes(view[at : at + take]))
            at += take
        rest = bytes(view[at:])
        del view
        if final:
            sync(self.fs.loop, self.upload.pend)
            self.buffer = None
        else:
            self.offset += at
            self.buffer = io.BytesIO(rest)
            self.buffer.seek(0, os.SEEK_END)
        return False

    def commit(self) -> None:
        raise AssertionError("a pending file is committed by the run's commit, never by itself")

    def discard(self) -> None:
        sync(self.fs.loop, self.upload.abort)
        self.buffer = None

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:  # a half-written file must not become a pending output
            self.discard()
            self.closed = True


class PendingS3FileSystem(S3FileSystem):
    """The filesystem of an s3 output's staging: writes into the staging region (`staging`, a folder, or the
    single file `staging` when `single`) or onto the output's own keys (`target`) become pending uploads of
    the final keys, recorded under `records`. Everything else (scratch, reads) is plain s3fs."""

    def __init__(self, *args: Any, raymerge_pending: dict[str, Any], **kwargs: Any) -> None:
        self.staging = raymerge_pending["staging"]
        self.target = raymerge_pending["target"]
        self.records = raymerge_pending["records"]
        self.single = bool(raymerge_pending["single"])
        super().__init__(*args, **kwargs)

    def final_path(self, path: str) -> str | None:
        """The final bucket/key a write to `path` lands on, or None when `path` is not part of the output."""
        p = self._strip_protocol(path).rstrip("/")
        if self.single:
            return self.target if p in (self.staging, self.target) else None
        for region in (self.staging, self.target):
            if p.startswith(region + "/"):
                return self.target + p[len(region) :]
        return None

    def part_upload(self, path: str) -> PartUpload:
        """A pending upload of `path` (a file of the output) for tasks to send its parts themselves."""
        final = self.final_path(path)
        if final is None:
            raise ValueError(f"{path}: not a file of the output")
        upload = _Upload(self, final)
        return PartUpload(self, final, sync(self.loop, upload._start))

    def record_path(self, final: str) -> str:
        rel = final[len(self.target) :].lstrip("/") or self.target.rsplit("/", 1)[-1]
        return f"{self.records}/{rel}.pending"

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None, **kwargs: Any) -> Any:
        final = None if "r" in mode else self.final_path(path)
        if final is None:
            return super()._open(path, mode, block_size=block_size, **kwargs)
        if "a" in mode:
            raise ValueError(f"{path}: an output file cannot be appended to; write it whole")
        return PendingFile(self, final, block_size or self.default_block_size)

    async def _pipe_file(self, path: str, data: Any, chunksize: int = PART_BYTES, **kwargs: Any) -> Any:
        final = self.final_path(path)
        if final is None:
            return await super()._pipe_file(path, data, chunksize=chunksize, **kwargs)
        upload = _Upload(self, final)
        await _send(upload, (data[i : i + PART_BYTES] for i in range(0, len(data), PART_BYTES)))
        return None

    async def _put_file(self, lpath: str, rpath: str, callback: Any = DEFAULT_CALLBACK, **kwargs: Any) -> Any:
        final = self.final_path(rpath)
        if final is None or os.path.isdir(lpath):
            return await super()._put_file(lpath, rpath, callback=callback, **kwargs)
        size = os.path.getsize(lpath)
        chunk = max(PART_BYTES, -(-size // MAX_PARTS))
        callback.set_size(size)
        with open(lpath, "rb") as f:
            await _send(_Upload(self, final), _read_chunks(f, chunk, callback))
        return None

    async def _cp_file(self, path1: str, path2: str, preserve_etag: bool | None = None, **kwargs: Any) -> None:
        final = self.final_path(path2)
        if final is None:
            return await super()._cp_file(path1, path2, preserve_etag=preserve_etag, **kwargs)
        size = int((await self._info(path1))["size"])
        upload = _Upload(self, final)
        try:
            for first in range(0, size, MAX_PART_BYTES):
                await upload.copy_part(self._strip_protocol(path1), first, min(size, first + MAX_PART_BYTES) - 1)
        except BaseException:
            await upload.abort()
            raise
        await upload.pend()
        return None

    async def _touch(self, path: str, truncate: bool = True, data: Any = None, **kwargs: Any) -> None:
        final = self.final_path(path)
        if final is None:
            return await super()._touch(path, truncate=truncate, data=data, **kwargs)
        await _Upload(self, final).pend()
        return None

    touch = sync_wrapper(_touch)

    async def _rm_file(self, path: str, **kwargs: Any) -> None:
        final = self.final_path(path)
        if final is None:
            return await super()._rm_file(path, **kwargs)
        # The record goes; its upload is aborted with the commit's strays.
        return await super()._rm_file(self.record_path(final))

    async def _rm(self, path: Any, recursive: bool = False, **kwargs: Any) -> Any:
        final = self.final_path(path) if isinstance(path, str) else None
        if final is None:
            return await super()._rm(path, recursive=recursive, **kwargs)
        await self._rm_file(path)
        if recursive:
            await super()._rm(self.record_path(final)[: -len(".pending")], recursive=True)
        return None


@dataclass(frozen=True)
class PartUpload:
    """One output file whose parts many tasks upload themselves, each its numbered piece, completed with
    the run's commit: a file cut into blocks is written once, without parts stored elsewhere first.
    Part numbers start at 1 and follow the file's order; every part but the last must be >= 5 MiB (S3's rule).
    Pickles to Ray workers."""

    fs: PendingS3FileSystem
    path: str  # bucket/key of the final object
    upload_id: str

    def put(self, number: int, data: bytes) -> dict[str, Any]:
        """Upload part `number`; what `finish` needs of it."""
        bucket, key, _ = self.fs.split_path(self.path)
        out = self.fs.call_s3(
            "upload_part", Bucket=bucket, Key=key, UploadId=self.upload_id, PartNumber=number, Body=data
        )
        return {
            "PartNumber": number,
            "ETag": out["ETag"],
            "Size": len(data),
            **{c: out[c] for c in _CHECKSUMS if c in out},
        }

    def finish(self, parts: list[dict[str, Any]]) -> None:
        """Record the upload, all its parts sent, for the commit."""
        ordered = sorted(parts, key=lambda p: p["PartNumber"])
        if [p["PartNumber"] for p in ordered] != list(range(1, len(ordered) + 1)):
            raise ValueError(f"s3://{self.path}: parts {[p['PartNumber'] for p in ordered]} are not 1..{len(ordered)}")
        size = sum(p["Size"] for p in ordered)
        record = Pending(
            self.path, self.upload_id, [{k: v for k, v in p.items() if k != "Size"} for p in ordered], size
        )
        self.fs.pipe_file(self.fs.record_path(self.path), record.to_json())


def _read_chunks(f: Any, size: int, callback: Any) -> Iterator[bytes]:
    while chunk := f.read(size):
        callback.relative_update(len(chunk))
        yield chunk


async def _send(upload: _Upload, chunks: Iterable[bytes]) -> None:
    """Upload the chunks as parts and record the upload; a failure aborts it, so nothing is left pending."""
    try:
        for chunk in chunks:
            await upload.part(chunk)
    except BaseException:
        await upload.abort()
        raise
    await upload.pend()


# -- the commit ---------------------------------------------------------------------------------------
class PendingOutput:
    """An s3 output being written as pending uploads: clean-up before, commit or abort after.

    `target` is the output's bucket/key; `mark` the bucket/key prefix that every run's pending, staging and
    scratch prefix of this output starts with (`.NAME.raymerge-`); `manifest` the name written last in a
    folder output. One run at a time per output: object stores have no lock to enforce it.
    """

    def __init__(self, fs: PendingS3FileSystem, target: str, mark: str, manifest: str) -> None:
        self.fs, self.target, self.manifest = fs, target, manifest
        self.bucket, self.key, _ = fs.split_path(target)
        self.mark = fs.split_path(mark)[1]
        self._pending: list[Pending] | None = None
        self._file_at_key = False  # learnt by `existing`, which every run asks before it writes

    def _run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return sync(self.fs.loop, fn, *args)

    # -- before writing -----------------------------------------------------------------------------
    def existing(self) -> tuple[bool, bool]:
        """(an object at the output's key, objects below it): a HEAD and a one-key listing."""
        return self._run(self._existing)

    async def _existing(self) -> tuple[bool, bool]:
        try:
            await self.fs._call_s3("head_object", Bucket=self.bucket, Key=self.key)
            self._file_at_key = True
        except FileNotFoundError:
            self._file_at_key = False
        out = await self.fs._call_s3("list_objects_v2", Bucket=self.bucket, Prefix=self.key + "/", MaxKeys=1)
        return self._file_at_key, bool(out.get("KeyCount") or out.get("Contents"))

    def clean(self) -> None:
        """Abort every upload under the output and the run prefixes, and delete those prefixes' objects: what
        a killed run left before this one starts, or what this run wrote before it failed."""
        self._run(self._clean, True)

    async def _clean(self, output_uploads: bool) -> None:
        fs, bucket = self.fs, self.bucket
        stray = [u for u in await list_uploads(fs, bucket, self.key) if self._in_output(u[0])] if output_uploads else []
        stray += await list_uploads(fs, bucket, self.mark)
        leftovers = [k async for k, _ in list_objects(fs, bucket, self.mark)]
        await asyncio.gather(abort_uploads(fs, bucket, stray), delete_keys(fs, bucket, leftovers))

    def _in_output(self, key: str) -> bool:
        return key == self.key if self.fs.single else key.startswith(self.key + "/")

    # -- after writing ------------------------------------------------------------------------------
    def pending(self) -> list[Pending]:
        """The run's pending uploads, from their records: one listing, then the records in parallel."""
        if self._pending is None:
            self._pending = self._run(self._load)
        return self._pending

    def begin(self) -> None:
        """Mark the run's pending prefix as live. Another run to the same output that starts meanwhile removes
        the mark with everything else it finds there, so this run can tell, and refuse to commit."""
        bucket, prefix, _ = self.fs.split_path(self.fs.records)
        self.fs.call_s3("put_object", Bucket=bucket, Key=f"{prefix}/{RUN_MARK}", Body=b"")

    async def _load(self) -> list[Pending]:
        bucket, prefix, _ = self.fs.split_path(self.fs.records)
        keys = [k async for k, _ in list_objects(self.fs, bucket, prefix + "/")]
        if f"{prefix}/{RUN_MARK}" not in keys:
            raise RunFailed(
                f"output s3://{self.target}: another run to this output started and removed this run's "
                "pending uploads; nothing committed"
            )
        keys = [k for k in keys if k.endswith(".pending")]

        async def read(key: str) -> Pending:
            return Pending(**json.loads(await self.fs._cat_file(f"{bucket}/{key}")))

        return sorted(await bounded([functools.partial(read, k) for k in keys]), key=lambda p: p.path)

    def written_bytes(self) -> int:
        return sum(p.size for p in self.pending())

    def commit(self, manifest: dict[str, Any] | None) -> None:
        self._run(self._commit, self.pending(), manifest)

    async def _commit(self, pending: list[Pending], manifest: dict[str, Any] | None) -> None:
        fs, bucket = self.fs, self.bucket
        if fs.single and [p.path for p in pending] != [self.target]:
            raise FileNotFoundError(f"s3://{self.target}: the run wrote no output file")
        old: list[str] = []
        manifest_key = f"{self.key}/{self.manifest}"
        if not fs.single:
            # the old output: its objects, and a file at the output's own key that a folder replaces
            old = [k async for k, _ in list_objects(fs, bucket, self.key + "/")]
            old += [self.key] if self._file_at_key else []
            if manifest_key in old:  # removed first: from here on the prefix does not look complete
                await fs._call_s3("delete_object", Bucket=bucket, Key=manifest_key)
        await bounded([functools.partial(self._complete, p) for p in pending])
        if manifest is not None:  # written last: the output is complete once it exists
            body = json.dumps(manifest, indent=2, default=str).encode()
            await fs._call_s3("put_object", Bucket=bucket, Key=manifest_key, Body=body, ContentType="application/json")
        new = {fs.split_path(p.path)[1] for p in pending} | {manifest_key}
        stale = [k for k in old if k not in new]
        strays = [u for u in await list_uploads(fs, bucket, self.key) if self._in_output(u[0])]
        await asyncio.gather(delete_keys(fs, bucket, stale), abort_uploads(fs, bucket, strays))
        await self._clean(output_uploads=False)
        fs.invalidate_cache(self.target)

    async def _complete(self, p: Pending) -> None:
        bucket, key, _ = self.fs.split_path(p.path)
        if p.upload_id is None:
            await self.fs._call_s3("put_object", Bucket=bucket, Key=key, Body=b"")
            return
        try:
            await self.fs._call_s3(
                "complete_multipart_upload",
                Bucket=bucket,
                Key=key,
                UploadId=p.upload_id,
                MultipartUpload={"Parts": p.parts},
            )
        except FileNotFoundError:
            # No such upload: a retry whose first attempt completed it (the answer was lost) finds the object.
            head = await self.fs._call_s3("head_object", Bucket=bucket, Key=key)
            if head.get("ETag") != multipart_etag(p.parts):
                raise


def multipart_etag(parts: list[dict[str, Any]]) -> str:
    """The ETag S3 gives the object a multipart upload of these parts completes into."""
    digests = b"".join(bytes.fromhex(part["ETag"].strip('"')) for part in parts)
    return f'"{hashlib.md5(digests).hexdigest()}-{len(parts)}"'
