"""A TCP proxy on loopback that drops or delays a share of connections, to test S3 retries for real."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class FaultProxy:
    """Forwards 127.0.0.1:<port> to an upstream port; every `drop_every`-th connection is closed at once,
    every connection is delayed by `delay_s`. `down = True` refuses everything (an endpoint that stays down)."""

    def __init__(self, upstream_port: int, *, drop_every: int = 0, delay_s: float = 0.0) -> None:
        self.upstream_port = upstream_port
        self.drop_every = drop_every
        self.delay_s = delay_s
        self.down = False
        self.accepted = 0
        self.dropped = 0
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(128)
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._server.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        self._server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            if self.down or (self.drop_every and self.accepted % self.drop_every == 0):
                self.dropped += 1
                client.close()
                continue
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=30)
        except OSError:
            client.close()
            return
        pumps = [
            threading.Thread(target=_pump, args=(client, upstream), daemon=True),
            threading.Thread(target=_pump, args=(upstream, client), daemon=True),
        ]
        for p in pumps:
            p.start()
        for p in pumps:
            p.join()
        for s in (client, upstream):
            with contextlib.suppress(OSError):
                s.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
