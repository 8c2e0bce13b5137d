"""Webhooks against a real local receiver that verifies every delivery with the Standard
Webhooks reference library (as a receiver would, with no code of ours), answers 500 a few
times, and must see exactly one successful delivery per outcome."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import standardwebhooks
from nats.js import JetStreamContext

from broker.jobs import CaptionJob
from broker.subjects import EVENTS_STREAM, WEBHOOK_JOBS_BUCKET
from broker.url_guard import parse_networks
from client.api import Client, SubmitError
from controller.webhooks import WEBHOOKS_CONSUMER, WebhookSender, backoff_s
from tests.conftest import agent_config, running_agent
from tests.secure_stack import Secure


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    """Answers 500 to the first ``failures`` requests, then 200; records each one."""

    failures: int = 2
    got: list[Delivery] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    base: str = ""

    async def wait_for(self, check, timeout_s: float = 30) -> None:  # type: ignore[no-untyped-def]
        """Until ``check(got)`` holds (waited for in a thread: the sender runs on our loop)."""
        def wait() -> bool:
            with self.changed:
                return self.changed.wait_for(lambda: check(self.got), timeout_s)
        assert await asyncio.to_thread(wait), self.got


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            status = 500 if len(made.got) < made.failures else 200
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()
            with made.changed:
                made.got.append(Delivery(self.path, dict(self.headers), body, status))
                made.changed.notify_all()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    made.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield made
    server.shutdown()
    thread.join()


@pytest.fixture
async def sender(js: JetStreamContext) -> AsyncIterator[WebhookSender]:
    """The controller's sender, allowed to reach the loopback receiver, retrying fast."""
    made = WebhookSender(js, allowed=parse_networks("127.0.0.1/32"), retry_base_s=0.2)
    await made.start()
    yield made
    await made.stop()


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff_s(n, 5.0, 60.0) for n in (1, 2, 3, 4, 5)] == [5.0, 10.0, 20.0, 40.0, 60.0]


@pytest.mark.timeout(120)
async def test_each_outcome_is_delivered_once_signed_after_retries(
        client: Client, operator: Client, sender: WebhookSender, receiver: Receiver,
        js: JetStreamContext, nats_server: Secure, media_dir: Path, tmp_path: Path) -> None:
    settings, fresh = await operator.set_webhook_settings("default", url=f"{receiver.base}/t")
    assert fresh and settings.secret.startswith("whsec_")
    job = CaptionJob(video=await client.upload_input(media_dir / "talk.mp4"),
                     srt=await client.upload_input(media_dir / "talk.srt"))
    async with running_agent(agent_config(nats_server, tmp_path / "a")):
        done = await client.submit(job)
        await client.result(done.job_id, timeout_s=60)
        await receiver.wait_for(lambda got: any(d.status == 200 for d in got))
        # A job naming its own webhook, cancelled: its outcome goes there instead.
        own = await client.submit(CaptionJob(
            video="obj:none.mp4", srt="obj:none.srt", webhook=f"{receiver.base}/own?tok=x"),
            job_id="own-hook")
    await client.cancel(own.job_id)
    await receiver.wait_for(lambda got: any(d.path.startswith("/own") for d in got))

    verifier = standardwebhooks.Webhook(settings.secret)
    for delivery in receiver.got:  # every attempt is signed, and verifies
        assert json.loads(delivery.body) == verifier.verify(delivery.body, delivery.headers)
    first = [d for d in receiver.got if d.path == "/t"]
    assert [d.status for d in first] == [500, 500, 200]
    assert len({d.headers["webhook-id"] for d in first}) == 1  # one event, retried
    assert json.loads(first[-1].body)["kind"] == "succeeded"
    assert json.loads(first[-1].body)["job_id"] == done.job_id
    [cancelled] = [d for d in receiver.got if d.path.startswith("/own")]
    assert json.loads(cancelled.body)["kind"] == "cancelled"

    status = await client.status(done.job_id)
    assert [(a.ok, a.status, a.final) for a in status.webhooks] == [
        (False, 500, False), (False, 500, False), (True, 200, True)]
    assert status.webhooks[0].url == f"{receiver.base}/t"
    shown = (await client.status(own.job_id)).webhooks
    assert [a.ok for a in shown] == [True] and "tok" not in shown[0].url
    assert len([d for d in receiver.got if d.status == 200]) == 2  # one per outcome
    info = await js.consumer_info(EVENTS_STREAM, WEBHOOKS_CONSUMER)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)  # nothing more will be sent


async def test_a_webhook_to_a_private_address_is_refused_without_connecting(
        client: Client, operator: Client, sender: WebhookSender, receiver: Receiver,
        js: JetStreamContext) -> None:
    await operator.set_webhook_settings("default")
    port = receiver.base.rsplit(":", 1)[1]
    hooks = await js.key_value(WEBHOOK_JOBS_BUCKET)
    recorded = await hooks.watch("attempts.default.*")  # each attempt the sender records
    for job_id, url in (("meta", "http://169.254.169.254/latest/meta-data/"),
                        ("lo2", f"http://127.0.0.2:{port}/x")):
        await client.submit(CaptionJob(video="obj:a", srt="obj:b", webhook=url), job_id=job_id)
        await client.cancel(job_id)

    async def refused(job_id: str) -> str:
        while not (attempts := (await client.status(job_id)).webhooks):
            await recorded.updates(timeout=10)
        return attempts[0].error

    assert "link-local" in await asyncio.wait_for(refused("meta"), 10)
    assert "VIDFLEET_WEBHOOK_ALLOW_NETWORKS" in await asyncio.wait_for(refused("lo2"), 10)
    assert receiver.got == []
    await recorded.stop()


async def test_a_job_cannot_name_a_webhook_before_its_tenant_has_a_secret(
        client: Client) -> None:
    with pytest.raises(SubmitError, match="webhook_unconfigured"):
        await client.submit(CaptionJob(video="obj:a", srt="obj:b",
                                       webhook="https://hooks.example/x"))


async def test_settings_name_an_existing_tenant_and_an_http_url(operator: Client) -> None:
    with pytest.raises(ValueError, match="no tenant 'defualt'"):
        await operator.set_webhook_settings("defualt", url="https://hooks.example/x")
    with pytest.raises(ValueError, match="not an http"):
        await operator.set_webhook_settings("default", url="ftp://hooks.example/x")
    first, fresh = await operator.set_webhook_settings("default")
    again, fresh_again = await operator.set_webhook_settings("default", url="")
    rotated, _ = await operator.set_webhook_settings("default", rotate=True)
    assert fresh and not fresh_again and again.secret == first.secret
    assert rotated.secret != first.secret
