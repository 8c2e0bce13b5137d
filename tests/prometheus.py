"""A real Prometheus server for the tests (Debian's ``prometheus`` package, which the Makefile
installs): started on a free loopback port with deploy/prometheus's config, scraping a target
through a relay of ours, and asked through its HTTP query API.

Prometheus pushes nothing a test could wait on, so the relay makes its scrapes the events:
each one it passes on is counted, and a figure is read once a scrape has begun after the
previous one was stored (Prometheus stores a target's scrape before starting the next)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
_READY = "Server is ready to receive web requests"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ScrapeRelay:
    """An HTTP endpoint that answers each request with the target's ``/metrics``, counting
    the requests (Prometheus's scrapes) as they begin."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.scrapes = 0
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def scraped(self, count: int) -> None:
        """Until ``count`` more scrapes have begun."""
        async with self._changed:
            wanted = self.scrapes + count
            await self._changed.wait_for(lambda: self.scrapes >= wanted)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            async with self._changed:
                self.scrapes += 1
                self._changed.notify_all()
            async with httpx.AsyncClient(timeout=10) as http:
                reply = await http.get(f"http://{self.target}/metrics")
            writer.write(b"HTTP/1.1 %d OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n" % (
                             reply.status_code, reply.headers.get("content-type",
                                                                  "text/plain").encode(),
                             len(reply.content)) + reply.content)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, httpx.HTTPError):
            pass  # a scrape that fails is Prometheus's `up` 0, which the tests read too
        finally:
            writer.close()


class Prometheus:
    def __init__(self, url: str, relay: ScrapeRelay) -> None:
        self.url = url
        self.relay = relay

    async def query(self, expr: str) -> list[dict[str, object]]:
        async with httpx.AsyncClient(timeout=10) as http:
            reply = await http.get(f"{self.url}/api/v1/query", params={"query": expr})
        reply.raise_for_status()
        body = reply.json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    async def value_when(self, expr: str, ok: Callable[[float], bool],
                         timeout_s: float = 30.0) -> float:
        """The first value of ``expr`` that ``ok`` accepts, read after each stored scrape
        (the controller's gauges follow its 5 s ticks, so a figure may need a few)."""
        last: object = None

        async def read() -> float:
            nonlocal last
            while True:
                await self.relay.scraped(2)  # the one before this one is stored
                result = await self.query(expr)
                if result:
                    last = float(result[0]["value"][1])  # type: ignore[index]
                    if ok(last):
                        return last

        try:
            return await asyncio.wait_for(read(), timeout_s)
        except TimeoutError:
            raise AssertionError(f"{expr}: last {last!r} after {timeout_s} s") from None

    async def rules(self) -> list[dict[str, object]]:
        async with httpx.AsyncClient(timeout=10) as http:
            reply = await http.get(f"{self.url}/api/v1/rules")
        reply.raise_for_status()
        return [rule for group in reply.json()["data"]["groups"] for rule in group["rules"]]


@contextlib.asynccontextmanager
async def prometheus(directory: Path, target: str) -> AsyncIterator[Prometheus]:
    """Prometheus with deploy/prometheus's config and rules, scraping ``target`` (through the
    relay) each second."""
    directory.mkdir(parents=True, exist_ok=True)
    relay = ScrapeRelay(target)
    await relay.start()
    config = (DEPLOY / "prometheus.yml").read_text()
    assert "controller:9464" in config and "scrape_interval: 15s" in config
    config = config.replace("controller:9464", f"127.0.0.1:{relay.port}").replace(
        "scrape_interval: 15s", "scrape_interval: 1s").replace(
        "evaluation_interval: 15s", "evaluation_interval: 1s")
    (directory / "prometheus.yml").write_text(config)
    shutil.copy(DEPLOY / "alerts.yml", directory / "alerts.yml")
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        PROMETHEUS, f"--config.file={directory / 'prometheus.yml'}",
        f"--storage.tsdb.path={directory / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    ready = asyncio.Event()
    logging = asyncio.create_task(_log(proc, directory / "prometheus.log", ready))
    try:
        waiting = asyncio.create_task(ready.wait())
        await asyncio.wait({waiting, logging}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if not ready.is_set():
            await logging if logging.done() else None  # its exit, with the log's end
            raise RuntimeError(f"prometheus not ready in 30 s: "
                               f"{(directory / 'prometheus.log').read_text()[-2000:]}")
        yield Prometheus(f"http://127.0.0.1:{port}", relay)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
        await logging
        await relay.stop()


async def _log(proc: asyncio.subprocess.Process, path: Path, ready: asyncio.Event) -> None:
    """Keep Prometheus's log (it logs to stderr) and say when it is ready to be asked."""
    assert proc.stderr is not None
    with open(path, "wb") as log:
        async for line in proc.stderr:
            log.write(line)
            if _READY.encode() in line:
                ready.set()
    if not ready.is_set():
        raise RuntimeError(f"prometheus exited {proc.returncode}: {path.read_text()[-2000:]}")
