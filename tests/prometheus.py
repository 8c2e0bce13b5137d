"""A real Prometheus server for the tests (Debian's ``prometheus`` package, which the Makefile
installs): started on a free loopback port with deploy/prometheus's config, pointed at a
target, and asked through its HTTP query API."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    async def query(self, expr: str) -> list[dict[str, object]]:
        async with httpx.AsyncClient(timeout=10) as http:
            reply = await http.get(f"{self.url}/api/v1/query", params={"query": expr})
        reply.raise_for_status()
        body = reply.json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    async def value_when(self, expr: str, ok: Callable[[float], bool],
                         timeout_s: float = 30.0) -> float:
        """The first value of ``expr`` that ``ok`` accepts; Prometheus has no push to wait on,
        so this asks each half second (a scrape is every second) until ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        last: object = None
        while time.monotonic() < deadline:
            result = await self.query(expr)
            if result:
                value = float(result[0]["value"][1])  # type: ignore[index]
                last = value
                if ok(value):
                    return value
            await asyncio.sleep(0.5)
        raise AssertionError(f"{expr}: last {last!r} after {timeout_s} s")

    async def rules(self) -> list[dict[str, object]]:
        async with httpx.AsyncClient(timeout=10) as http:
            reply = await http.get(f"{self.url}/api/v1/rules")
        reply.raise_for_status()
        return [rule for group in reply.json()["data"]["groups"] for rule in group["rules"]]


@contextmanager
def prometheus(directory: Path, target: str) -> Iterator[Prometheus]:
    """Prometheus with deploy/prometheus's config and rules, scraping ``target`` each second."""
    directory.mkdir(parents=True, exist_ok=True)
    config = (DEPLOY / "prometheus.yml").read_text()
    assert "controller:9464" in config and "scrape_interval: 15s" in config
    config = config.replace("controller:9464", target).replace(
        "scrape_interval: 15s", "scrape_interval: 1s").replace(
        "evaluation_interval: 15s", "evaluation_interval: 1s")
    (directory / "prometheus.yml").write_text(config)
    shutil.copy(DEPLOY / "alerts.yml", directory / "alerts.yml")
    port = free_port()
    with open(directory / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={directory / 'prometheus.yml'}",
             f"--storage.tsdb.path={directory / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", proc, directory / "prometheus.log")
        yield Prometheus(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited {proc.returncode}: "
                               f"{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"prometheus not ready in 30 s: {log.read_text()[-2000:]}")
