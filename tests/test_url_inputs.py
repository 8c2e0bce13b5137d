"""Inputs given as http(s) URLs are fetched by the agent, bounded in size; HTTP errors are
classified (4xx: the job's fault, final; 5xx: retried). The server is on loopback, which an
agent fetches from only when its url_allow_networks says so (tests/test_ssrf.py)."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from broker.events import Failed, Retrying, Succeeded
from broker.jobs import CaptionJob
from gpu_agent.agent import Agent
from gpu_agent.config import AgentConfig
from tests.conftest import Outcomes, agent_config, running_agent

LOOPBACK = "127.0.0.1/32"


def _config(nats_server, work_dir: Path, **overrides: object) -> AgentConfig:
    return agent_config(nats_server, work_dir, url_allow_networks=LOOPBACK, **overrides)


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    flaky_calls = 0

    def do_GET(self) -> None:
        if self.path.startswith("/broken"):
            self.send_error(503, "try later")
            return
        if self.path.startswith("/flaky/"):  # fails once, then serves the file
            type(self).flaky_calls += 1
            if type(self).flaky_calls == 1:
                self.send_error(502, "bad gateway")
                return
            self.path = self.path.removeprefix("/flaky")
        super().do_GET()


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the agent hangs up mid-body on purpose: past the size limit, or a sibling failed


@pytest.fixture
def http_base(media_dir: Path) -> Iterator[str]:
    server = _Server(("127.0.0.1", 0), functools.partial(_Handler, directory=str(media_dir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


@pytest.fixture
async def agent(js, nats_server, tmp_path: Path, outcomes: Outcomes) -> AsyncIterator[Agent]:
    """conftest's agent, allowed to fetch from the loopback test server."""
    async with running_agent(_config(nats_server, tmp_path / "agent"), outcomes) as a:
        yield a


async def test_url_inputs(client, agent, http_base: str) -> None:
    receipt = await client.submit(CaptionJob(video=f"{http_base}/talk.mp4?sig=SECRET",
                                             srt=f"{http_base}/talk.srt"))
    assert isinstance(await client.result(receipt.job_id, timeout_s=60), Succeeded)


async def test_url_404_fails_without_echoing_the_query(client, agent, http_base: str) -> None:
    receipt = await client.submit(CaptionJob(video=f"{http_base}/gone.mp4?token=SECRET",
                                             srt=f"{http_base}/talk.srt"))
    failed = await client.result(receipt.job_id, timeout_s=30)
    assert isinstance(failed, Failed) and failed.attempt == 1
    assert "gone.mp4 answered HTTP 404" in failed.error.message
    assert "SECRET" not in failed.error.message


async def test_url_5xx_is_retried_then_fails_for_good(client, js, nats_server, http_base: str,
                                                      tmp_path: Path) -> None:
    config = _config(nats_server, tmp_path / "a", retry_delay_s=0.1)
    async with running_agent(config):
        receipt = await client.submit(CaptionJob(video=f"{http_base}/broken.mp4",
                                                 srt=f"{http_base}/talk.srt"))
        failed = await client.result(receipt.job_id, timeout_s=60)
    assert isinstance(failed, Failed)
    assert failed.attempt == 4  # max_deliver of the test topology
    assert "HTTP 503" in failed.error.message
    assert "gave up after 4 failed attempts" in failed.error.message


async def test_url_over_the_size_limit(client, js, nats_server, http_base: str,
                                       tmp_path: Path) -> None:
    config = _config(nats_server, tmp_path / "a", max_input_bytes=1000)
    async with running_agent(config):
        receipt = await client.submit(CaptionJob(video=f"{http_base}/talk.mp4",
                                                 srt=f"{http_base}/talk.srt"))
        failed = await client.result(receipt.job_id, timeout_s=30)
    assert isinstance(failed, Failed)
    assert "more than the limit of 1000 bytes" in failed.error.message


async def test_transient_trouble_is_retried_and_explained(client, js, nats_server, http_base: str,
                                                          tmp_path: Path) -> None:
    config = _config(nats_server, tmp_path / "a", retry_delay_s=0.1)
    async with running_agent(config):
        receipt = await client.submit(CaptionJob(video=f"{http_base}/flaky/talk.mp4",
                                                 srt=f"{http_base}/talk.srt"))
        events = [e async for e in client.watch(receipt.job_id, timeout_s=60)]
    retrying = [e for e in events if isinstance(e, Retrying)]
    assert len(retrying) == 1 and retrying[0].error.code == "input_unavailable"
    assert "HTTP 502" in retrying[0].error.message and retrying[0].failures == 1
    assert isinstance(events[-1], Succeeded) and events[-1].attempt == 2
