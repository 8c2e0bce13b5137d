"""A real HTTP server on a loopback address, in a thread, whose paths can misbehave on
purpose: redirect, trickle, stall, never answer, reset. Records what it was asked."""

from __future__ import annotations

import functools
import http.server
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LoopbackServer", "serve"]


class LoopbackServer(http.server.ThreadingHTTPServer):
    """Serves ``routes`` (path -> (kind, arg)), else files; records (path, Host) per request."""

    def __init__(self, host: str, directory: Path) -> None:
        super().__init__((host, 0), functools.partial(_Handler, directory=str(directory)))
        self.routes: dict[str, tuple[str, object]] = {}
        self.seen: list[tuple[str, str]] = []
        self.stopping = threading.Event()
        self.base = f"http://{host}:{self.server_address[1]}"

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client gone mid-trickle, a reset we made on purpose


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: LoopbackServer

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.seen.append((self.path, self.headers.get("Host", "")))
        kind, arg = srv.routes.get(self.path.split("?", 1)[0], ("file", None))
        if kind == "redirect":
            self.send_response(302)
            self.send_header("Location", str(arg))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif kind == "body":
            self._head(len(arg))  # type: ignore[arg-type]
            self.wfile.write(arg)  # type: ignore[arg-type]
        elif kind in ("trickle", "stall"):
            self._head(1_000_000)
            self.wfile.write(b"x" * 10)
            while not srv.stopping.wait(0.05 if kind == "trickle" else None):
                self.wfile.write(b"x")  # a closed client ends this with an OSError
                self.wfile.flush()
        elif kind == "silent":  # accepts, reads the request, never answers
            srv.stopping.wait()
        elif kind == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.close()
        else:
            super().do_GET()

    def _head(self, length: int) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.end_headers()


def serve(host: str, directory: Path) -> Iterator[LoopbackServer]:
    server = LoopbackServer(host, directory)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.stopping.set()
    server.shutdown()
    server.server_close()
    thread.join()
