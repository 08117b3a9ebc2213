"""S3 through s3fs: every request counted, none wasted, and outputs committed the way object stores allow.

`S3FileSystem` is what `s3://` resolves to once `raymerge.storage` is imported (in the driver and in
every Ray worker that unpickles one): s3fs with botocore hooks that count requests and bytes per
bucket (`raymerge.usage`), no HeadBucket before a write (`makedirs` of a key is a no-op: object
stores have no folders), and recursive deletes that name only keys a listing returned.

The commit protocol built on it is `raymerge.s3commit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import s3fs
from fsspec.asyn import sync_wrapper

from raymerge import usage

DELETE_BATCH = 1000  # DeleteObjects takes at most this many keys
CONCURRENCY = 32  # requests in flight at once in a commit or a clean-up
_metered: weakref.WeakSet[Any] = weakref.WeakSet()


def storage_label(bucket: str, endpoint: str | None) -> str:
    """How a report names an S3 storage: the bucket, and the endpoint when it is not AWS's own (without any
    user or password a URL may carry: reports never hold credentials)."""
    if not endpoint:
        return f"s3://{bucket}"
    url = urlsplit(endpoint)
    return f"s3://{bucket} at {url.scheme}://{url.hostname}" + (f":{url.port}" if url.port else "") + url.path


def _size(body: Any) -> int:
    if body is None:
        return 0
    if isinstance(body, (bytes, bytearray, memoryview)):
        return memoryview(body).nbytes
    if isinstance(body, str):
        return len(body.encode())
    with contextlib.suppress(AttributeError, OSError):
        here = body.tell()
        end = body.seek(0, os.SEEK_END)
        body.seek(here)
        return end - here
    return 0


def _range_size(header: str | None) -> int:
    """Bytes in an HTTP range `bytes=a-b`."""
    if not header or not header.startswith("bytes="):
        return 0
    first, _, last = header[6:].partition("-")
    return int(last) - int(first) + 1


def _meter(client: Any, endpoint: str | None) -> None:
    """Count every request `client` sends, and its payload bytes, into this process's usage."""

    def bucket_of(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["raymerge_storage"] = storage_label(params.get("Bucket", ""), endpoint)

    def before_call(model: Any, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        op = model.name
        written = _size(params.get("body")) if op in ("PutObject", "UploadPart") else 0
        copied = _range_size(params.get("headers", {}).get("x-amz-copy-source-range")) if op == "UploadPartCopy" else 0
        usage.add(context.get("raymerge_storage", "s3://"), op, written=written, copied=copied)

    def after_call(parsed: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        read = int(parsed.get("ContentLength") or 0) if model.name == "GetObject" else 0
        retries = int(parsed.get("ResponseMetadata", {}).get("RetryAttempts") or 0)
        if read or retries:
            usage.add(context.get("raymerge_storage", "s3://"), read=read, retries=retries)

    events = client.meta.events
    events.register("before-parameter-build.s3", bucket_of, unique_id="raymerge-usage-bucket")
    events.register("before-call.s3", before_call, unique_id="raymerge-usage-call")
    events.register("after-call.s3", after_call, unique_id="raymerge-usage-result")
    _metered.add(client)


class S3FileSystem(s3fs.S3FileSystem):
    """s3fs with its requests counted, and without the ones an object store does not need."""

    async def get_s3(self, bucket: str | None = None) -> Any:
        client = await super().get_s3(bucket)
        if client is not None and client not in _metered:
            _meter(client, self.endpoint_url or self.client_kwargs.get("endpoint_url"))
        return client

    def label(self, path: str) -> str:
        return storage_label(self.split_path(path)[0], self.endpoint_url or self.client_kwargs.get("endpoint_url"))

    async def _mkdir(self, path: str, acl: Any = False, create_parents: bool = True, **kwargs: Any) -> None:
        """Only a bucket can be made; a key's "folder" needs nothing, so nothing is asked (no HeadBucket)."""
        if self.split_path(path)[1]:
            return
        await super()._mkdir(path, acl=acl, create_parents=create_parents, **kwargs)

    async def _makedirs(self, path: str, exist_ok: bool = False) -> None:
        if self.split_path(path)[1]:
            return
        await super()._makedirs(path, exist_ok=exist_ok)

    mkdir = sync_wrapper(_mkdir)
    makedirs = sync_wrapper(_makedirs)

    async def _rm(self, path: Any, recursive: bool = False, **kwargs: Any) -> Any:
        """A recursive delete of one key or prefix: one listing, then DeleteObjects of the keys it found."""
        if not (recursive and isinstance(path, str) and self.split_path(path)[1]):
            return await super()._rm(path, recursive=recursive, **kwargs)
        bucket, key, _ = self.split_path(path)
        key = key.rstrip("/")
        found = [k async for k, _ in list_objects(self, bucket, key) if k == key or k.startswith(key + "/")]
        await delete_keys(self, bucket, found)
        self.invalidate_cache(path)
        return [f"{bucket}/{k}" for k in found]

    async def _cat_file(
        self, path: str, version_id: Any = None, start: Any = None, end: Any = None, **kwargs: Any
    ) -> Any:
        """A whole file in one GET: s3fs would HEAD it first to split large files into ranged GETs."""
        if start is None and end is None:
            kwargs["max_concurrency"] = 1
        return await super()._cat_file(path, version_id=version_id, start=start, end=end, **kwargs)

    async def _cp_file(self, path1: str, path2: str, preserve_etag: bool | None = None, **kwargs: Any) -> None:
        """s3fs's copy, with the bytes copied counted (a multipart copy is counted by its part requests)."""
        if preserve_etag:
            return await super()._cp_file(path1, path2, preserve_etag=preserve_etag, **kwargs)
        path1 = self._strip_protocol(path1)
        size = int((await self._info(path1))["size"])
        if size <= s3fs.core.MANAGED_COPY_THRESHOLD:
            await self._copy_basic(path1, path2, **kwargs)
            usage.add(self.label(path1), copied=size)
        else:
            await self._copy_managed(path1, path2, size, **kwargs)
        return None


# -- listing and deleting ------------------------------------------------------------------------------
async def list_objects(
    fs: s3fs.S3FileSystem, bucket: str, prefix: str, delimiter: str = ""
) -> AsyncIterator[tuple[str, int]]:
    """(key, size) of every object under `prefix` (and (common prefix, -1) with a delimiter): one listing."""
    token: dict[str, str] = {}
    while True:
        extra = {"Delimiter": delimiter} if delimiter else {}
        out = await fs._call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, **extra, **token)
        for o in out.get("Contents", []):
            yield o["Key"], int(o["Size"])
        for p in out.get("CommonPrefixes", []):
            yield p["Prefix"], -1
        if not out.get("IsTruncated"):
            return
        token = {"ContinuationToken": out["NextContinuationToken"]}


async def list_uploads(fs: s3fs.S3FileSystem, bucket: str, prefix: str) -> list[tuple[str, str]]:
    """(key, upload id) of every multipart upload in progress under `prefix`."""
    found: list[tuple[str, str]] = []
    marker: dict[str, str] = {}
    while True:
        out = await fs._call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix, **marker)
        found += [(u["Key"], u["UploadId"]) for u in out.get("Uploads", [])]
        if not out.get("IsTruncated"):
            return found
        marker = {"KeyMarker": out["NextKeyMarker"], "UploadIdMarker": out["NextUploadIdMarker"]}


async def bounded(calls: Iterable[Callable[[], Awaitable[Any]]], limit: int = CONCURRENCY) -> list[Any]:
    """Run the calls with at most `limit` in flight; results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await call()

    return await asyncio.gather(*(one(c) for c in calls))


async def delete_keys(fs: s3fs.S3FileSystem, bucket: str, keys: list[str]) -> None:
    """DeleteObjects in batches of 1000, batches in parallel; any key S3 refused fails the call."""

    async def batch(part: list[str]) -> None:
        out = await fs._call_s3(
            "delete_objects", Bucket=bucket, Delete={"Objects": [{"Key": k} for k in part], "Quiet": True}
        )
        if out.get("Errors"):
            e = out["Errors"][0]
            raise OSError(f"s3://{bucket}/{e.get('Key')}: not deleted: {e.get('Code')} {e.get('Message')}")

    batches = [keys[i : i + DELETE_BATCH] for i in range(0, len(keys), DELETE_BATCH)]
    await bounded([functools.partial(batch, b) for b in batches])


async def abort_uploads(fs: s3fs.S3FileSystem, bucket: str, uploads: list[tuple[str, str]]) -> None:
    async def abort(key: str, upload_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):  # finished or aborted meanwhile
            await fs._call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)

    await bounded([functools.partial(abort, k, u) for k, u in uploads])
