"""A loopback HTTP proxy in front of the S3 server that sees every request a run makes, and can stop one.

It records each request's S3 operation, bucket, key and payload size from the HTTP request itself (the
counting does not rely on raymerge's own), and the bytes of each response body. `hold(predicate)` keeps
the first request that matches from reaching the server until `release()` (or for good: `drop()`): a test
can kill a run at an exact moment (its first upload, its commit's first change to the output) without
guessing at timing.
Each connection carries one request (`Connection: close` is forced), which keeps the proxy simple.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from tests.helpers import free_port, wait_for_port

WRITES = ("PutObject", "UploadPart")
COPIES = ("CopyObject", "UploadPartCopy")


@contextlib.contextmanager
def moto_server() -> Iterator[int]:
    """A real S3 API server (moto's server mode) on 127.0.0.1: its port, and the server stopped afterwards."""
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port, proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Request:
    method: str
    bucket: str
    key: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    op: str = ""
    payload: int = 0  # bytes of object data sent (PutObject, UploadPart)
    response_bytes: int = 0  # bytes of the response body (GetObject: object data received)
    status: int = 0
    deleted: list[str] = field(default_factory=list)  # keys named by DeleteObjects

    def under(self, prefix: str) -> bool:
        return self.key == prefix or self.key.startswith(prefix.rstrip("/") + "/")


def _operation(method: str, key: str, query: dict[str, list[str]], headers: dict[str, str]) -> str:
    copy = "x-amz-copy-source" in headers
    if method == "HEAD":
        return "HeadObject" if key else "HeadBucket"
    if method == "GET":
        if key:
            return "ListParts" if "uploadId" in query else "GetObject"
        if "uploads" in query:
            return "ListMultipartUploads"
        if "location" in query:
            return "GetBucketLocation"
        return "ListObjectsV2" if query.get("list-type") == ["2"] else "ListObjects"
    if method == "PUT":
        if not key:
            return "CreateBucket"
        if "uploadId" in query:
            return "UploadPartCopy" if copy else "UploadPart"
        return "CopyObject" if copy else "PutObject"
    if method == "POST":
        if "uploads" in query:
            return "CreateMultipartUpload"
        if "uploadId" in query:
            return "CompleteMultipartUpload"
        return "DeleteObjects" if "delete" in query else "Post"
    if method == "DELETE":
        if not key:
            return "DeleteBucket"
        return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
    return method


class S3Proxy:
    """Forwards 127.0.0.1:<port> to the S3 server at `upstream_port`, recording every request."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._predicate: Callable[[Request], bool] | None = None
        self.held: Request | None = None
        self._held_event = threading.Event()
        self._release = threading.Event()
        self._drop = False
        self._stop = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0), backlog=256)
        self._server.settimeout(0.1)  # so that the accept loop sees the stop
        self.port = self._server.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> S3Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._release.set()
        self._server.close()
        self._thread.join()

    # -- what tests use ---------------------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            self.requests = []

    def recorded(self, bucket: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if bucket is None or r.bucket == bucket]

    def counts(self, bucket: str | None = None) -> Counter[str]:
        return Counter(r.op for r in self.recorded(bucket))

    def uploaded(self, bucket: str | None = None) -> int:
        return sum(r.payload for r in self.recorded(bucket) if r.op in WRITES)

    def hold(self, predicate: Callable[[Request], bool]) -> None:
        """Keep the first request matching `predicate` from the server until `release` (or the proxy stops)."""
        self.held = None
        self._drop = False
        self._held_event.clear()
        self._release.clear()
        self._predicate = predicate

    def wait_held(self, alive: Callable[[], bool], timeout: float = 120.0) -> Request:
        """The held request, once it came; fails if `alive()` turns false first (the run ended without it)."""
        waited = 0.0
        while not self._held_event.wait(0.05):
            waited += 0.05
            if not alive() or waited > timeout:
                raise AssertionError("the awaited request never came")
        assert self.held is not None
        return self.held

    def release(self) -> None:
        """Let the held request through to the server."""
        self._predicate = None
        self._release.set()

    def drop(self) -> None:
        """Never send the held request: its connection is closed, as if the client had died before sending it."""
        self._drop = True
        self.release()

    # -- the proxy --------------------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        with contextlib.closing(client):
            reader = client.makefile("rb")
            head = _read_head(reader)
            if head is None:
                return
            request_line, header_lines = head
            method, target, _ = request_line.split(" ", 2)
            headers = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            url = urlsplit(target)
            bucket, _, key = unquote(url.path.lstrip("/")).partition("/")
            query = parse_qs(url.query, keep_blank_values=True)
            req = Request(method, bucket, key, query, headers)
            req.op = _operation(method, key, query, headers)
            if headers.get("expect", "").lower() == "100-continue":  # the client waits for this before its body
                client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = _read_body(reader, headers)
            if req.op in WRITES:
                req.payload = int(headers.get("x-amz-decoded-content-length") or len(body))
            if req.op == "DeleteObjects":
                req.deleted = [k.decode() for k in re.findall(rb"<Key>(.*?)</Key>", body)]
            with self._lock:
                self.requests.append(req)
                hit = self._predicate is not None and self.held is None and self._predicate(req)
                if hit:
                    self.held = req
            if hit:
                self._held_event.set()
                self._release.wait()
                if self._stop.is_set() or self._drop:
                    return
            self._forward(client, request_line, header_lines, body, req)

    def _forward(
        self, client: socket.socket, request_line: str, header_lines: list[str], body: bytes, req: Request
    ) -> None:
        dropped = ("connection", "keep-alive", "expect")
        kept = [h for h in header_lines if h.split(":", 1)[0].strip().lower() not in dropped]
        if "transfer-encoding" in req.headers:  # re-framed below with a length
            kept = [h for h in kept if h.split(":", 1)[0].strip().lower() != "transfer-encoding"]
            kept.append(f"Content-Length: {len(body)}")
        head = "\r\n".join([request_line, *kept, "Connection: close", "", ""]).encode("latin-1")
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        except OSError:
            return
        with contextlib.closing(upstream):
            upstream.sendall(head + body)
            received = b""
            header_end = -1
            total = 0
            while chunk := upstream.recv(1 << 16):
                total += len(chunk)
                if header_end < 0:
                    received += chunk
                    header_end = received.find(b"\r\n\r\n")
                    if header_end >= 0:
                        req.status = int(received.split(b" ", 2)[1])
                        header_end += 4
                try:
                    client.sendall(chunk)
                except OSError:
                    return
            if header_end >= 0 and req.method != "HEAD":
                req.response_bytes = total - header_end


def _read_head(reader) -> tuple[str, list[str]] | None:
    lines = []
    while True:
        line = reader.readline(65536)
        if not line:
            return None
        line = line.rstrip(b"\r\n").decode("latin-1")
        if not line:
            break
        lines.append(line)
    return lines[0], lines[1:]


def _read_body(reader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int(reader.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while reader.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += reader.read(size)
            reader.readline()
    return reader.read(int(headers.get("content-length") or 0))
