"""Webhook delivery (the contract is broker/webhooks.py): each terminal event, POSTed signed
to the job's URL or its tenant's default, retried with exponential backoff for a day.

The events come from a durable consumer on EVENTS (``webhooks``, terminal kinds only), so a
controller restart resumes where it was: an event is acked only once delivered or given up,
and a retry is a NAK with the backoff as its delay. Before each POST the attempts on record are
checked for an earlier success of the same ``webhook-id`` (a delivery whose ack was lost), so a
receiver sees one successful delivery per event. Addresses follow the rules of URL inputs
(broker/url_guard.py): a tenant could otherwise point the controller at its own private
network.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

import httpx
import nats.errors
from loguru import logger
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from broker.events import TERMINAL_KINDS, event_from_msg
from broker.subjects import (
    EVENTS_STREAM,
    WEBHOOK_JOBS_BUCKET,
    WEBHOOK_SETTINGS_BUCKET,
    event_subject,
    parse_event_subject,
)
from broker.url_guard import Network, shown_url
from broker.url_transport import GuardedTransport, HostUnresolvable, UrlRefused
from broker.webhooks import (
    MAX_ATTEMPTS_KEPT,
    WebhookAttempt,
    attempts_key,
    decode_attempts,
    encode,
    job_url_key,
    sign,
    tenant_hooks,
)

__all__ = ["WEBHOOKS_CONSUMER", "WebhookSender", "backoff_s"]

WEBHOOKS_CONSUMER = "webhooks"
ALLOW_SETTING = "VIDFLEET_WEBHOOK_ALLOW_NETWORKS"
_BATCH = 16


def backoff_s(delivery: int, base_s: float, cap_s: float) -> float:
    """The wait before delivery ``delivery + 1``: base, 2 base, 4 base... at most ``cap_s``."""
    return min(cap_s, base_s * 2.0 ** max(0, delivery - 1))


class WebhookSender:
    def __init__(self, js: JetStreamContext, *, allowed: Sequence[Network] = (),
                 retry_base_s: float = 5.0, retry_cap_s: float = 3600.0,
                 give_up_after_s: float = 86400.0, timeout_s: float = 10.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._js = js
        self._allowed = tuple(allowed)
        self._base_s = retry_base_s
        self._cap_s = retry_cap_s
        self._give_up_s = give_up_after_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._psub: JetStreamContext.PullSubscription | None = None
        self._http: httpx.AsyncClient | None = None

    async def start(self) -> None:
        await self._js.add_consumer(EVENTS_STREAM, ConsumerConfig(
            durable_name=WEBHOOKS_CONSUMER,
            filter_subjects=[event_subject("*", "*", kind, "*")
                             for kind in sorted(TERMINAL_KINDS)],
            deliver_policy=DeliverPolicy.NEW, ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._timeout_s * 3 + 30.0, max_deliver=-1, max_ack_pending=1024))
        self._settings = await self._js.key_value(WEBHOOK_SETTINGS_BUCKET)
        self._jobs = await self._js.key_value(WEBHOOK_JOBS_BUCKET)
        self._http = httpx.AsyncClient(
            transport=GuardedTransport(self._allowed, setting=ALLOW_SETTING),
            timeout=self._timeout_s, follow_redirects=False)
        self._psub = await self._js.pull_subscribe_bind(consumer=WEBHOOKS_CONSUMER,
                                                        stream=EVENTS_STREAM)
        self._task = asyncio.create_task(self._run(self._psub))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._psub is not None:  # or a fetch cut short leaves messages the drain waits for
            with contextlib.suppress(nats.errors.Error):
                await self._psub.unsubscribe()
        if self._http is not None:
            await self._http.aclose()

    async def _run(self, psub: JetStreamContext.PullSubscription) -> None:
        """Nothing here may end the loop: no webhook would be sent again."""
        while True:
            try:
                msgs = await psub.fetch(_BATCH, timeout=5.0)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("webhook events not fetched ({error}); again in 1 s",
                               error=str(exc) or type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            await asyncio.gather(*(self._handle(msg) for msg in msgs))

    async def _handle(self, msg: Msg) -> None:
        try:
            await self._deliver(msg)
        except asyncio.CancelledError:
            raise
        except Exception:  # it comes back after ack_wait
            logger.exception("webhook for {subject} not handled", subject=msg.subject)

    async def _deliver(self, msg: Msg) -> None:
        try:
            tenant, job_id, kind, _ = parse_event_subject(msg.subject)
            event = event_from_msg(msg.subject, msg.headers, msg.data)
        except ValueError as exc:
            logger.warning("unreadable event {subject} gets no webhook: {error}",
                           subject=msg.subject, error=str(exc))
            await msg.ack()
            return
        url = await self._url(tenant, job_id)
        if event is None or not url:
            await msg.ack()
            return
        secret = (await tenant_hooks(self._settings, tenant)).secret
        if not secret:
            logger.warning("no webhook for {tenant}/{job_id}: the tenant has no secret",
                           tenant=tenant, job_id=job_id)
            await msg.ack()
            return
        webhook_id = f"evt-{msg.metadata.sequence.stream}"
        attempts = await self._attempts(tenant, job_id)
        if any(a.webhook_id == webhook_id and a.ok for a in attempts):
            await msg.ack()  # delivered before; that ack was lost
            return
        now = self._clock()
        status, error = await self._post(url, webhook_id, int(now), secret, msg.data)
        ok = status is not None and 200 <= status < 300
        final = ok or now - event.at >= self._give_up_s
        attempts.append(WebhookAttempt(at=now, webhook_id=webhook_id, kind=kind,
                                       url=shown_url(url), ok=ok, status=status, error=error,
                                       final=final))
        await self._jobs.put(attempts_key(tenant, job_id), encode(attempts[-MAX_ATTEMPTS_KEPT:]))
        log = logger.bind(tenant=tenant, job_id=job_id)
        if ok:
            log.info("webhook {id} delivered ({status})", id=webhook_id, status=status)
            await msg.ack()
        elif final:
            log.warning("webhook {id} given up after a day: {error}", id=webhook_id,
                        error=error or f"HTTP {status}")
            await msg.term()
        else:
            delay = backoff_s(msg.metadata.num_delivered, self._base_s, self._cap_s)
            log.info("webhook {id} not delivered ({error}); again in {s:.0f} s",
                     id=webhook_id, error=error or f"HTTP {status}", s=delay)
            await msg.nak(delay=delay)

    async def _url(self, tenant: str, job_id: str) -> str:
        own = await _get(self._jobs, job_url_key(tenant, job_id))
        if own:
            return own.decode()
        return (await tenant_hooks(self._settings, tenant)).url

    async def _attempts(self, tenant: str, job_id: str) -> list[WebhookAttempt]:
        data = await _get(self._jobs, attempts_key(tenant, job_id))
        try:
            return decode_attempts(data) if data else []
        except ValueError:
            return []

    async def _post(self, url: str, webhook_id: str, timestamp: int, secret: str,
                    body: bytes) -> tuple[int | None, str]:
        """(status, "") when the receiver answered; (None, why) when it could not be asked.
        The error never holds the secret, the signature or the URL's query."""
        assert self._http is not None
        headers = {"content-type": "application/json", "webhook-id": webhook_id,
                   "webhook-timestamp": str(timestamp),
                   "webhook-signature": sign(secret, webhook_id, timestamp, body),
                   "user-agent": "vidfleet-webhooks"}
        try:
            response = await self._http.post(url, content=body, headers=headers)
        except UrlRefused as exc:
            return None, f"refused: {exc.reason}"
        except HostUnresolvable:
            return None, f"cannot resolve the host of {shown_url(url)}"
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: could not reach {shown_url(url)}"
        if 300 <= response.status_code < 400:
            return response.status_code, "a redirect is not followed: give the final URL"
        return response.status_code, "" if response.is_success else \
            f"HTTP {response.status_code}"


async def _get(kv: KeyValue, key: str) -> bytes | None:
    try:
        return (await kv.get(key)).value
    except (KeyNotFoundError, NotFoundError):
        return None
