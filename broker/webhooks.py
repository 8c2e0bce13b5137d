"""Webhooks: the controller POSTs each terminal event of a job (succeeded, failed, cancelled)
to the URL the job named, or else to its tenant's default, signed per the Standard Webhooks
specification (https://www.standardwebhooks.com/), so a receiver verifies it with any library
that implements it (``standardwebhooks`` in Python) and no code of ours.

    POST <url>
    content-type: application/json
    webhook-id: evt-<the event's sequence in EVENTS>   (the same on every retry: dedupe by it)
    webhook-timestamp: <unix seconds of this attempt>
    webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">
    body: the event's JSON, exactly as on events.<tenant>.<job_id>.<kind>.<publisher>

The key is the tenant's secret (``whsec_`` + base64 of 32 random bytes), which only the
operator sets and reads (``vidfleet webhooks set``). A 2xx answer is a delivery; anything
else, a timeout or a refused address is retried with exponential backoff for a day. Every
attempt is kept and shown by ``vidfleet job``.

Both buckets live in FLEET; no tenant or agent imports them:
- ``webhook_settings``, key ``tenant.<tenant>``: a ``TenantHooks`` (no expiry);
- ``webhook_jobs``, key ``url.<tenant>.<job_id>``: the URL a job named, and key
  ``attempts.<tenant>.<job_id>``: its ``WebhookAttempt`` list (both expire with the events).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import msgspec
from msgspec import Struct
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

__all__ = ["SECRET_PREFIX", "TenantHooks", "WebhookAttempt", "attempts_key", "decode_attempts",
           "decode_tenant_hooks", "encode", "job_url_key", "new_secret", "sign",
           "tenant_hooks", "tenant_key"]

SECRET_PREFIX = "whsec_"
MAX_ATTEMPTS_KEPT = 50


class TenantHooks(Struct, frozen=True, kw_only=True):
    url: str = ""  # the default for the tenant's jobs that name none ("": none)
    secret: str = ""  # whsec_...: what every delivery to the tenant is signed with


class WebhookAttempt(Struct, frozen=True, kw_only=True):
    at: float
    webhook_id: str
    kind: str  # the event's kind: succeeded, failed or cancelled
    url: str  # as shown to people: no query string, no user info
    ok: bool
    status: int | None = None  # the receiver's HTTP status, if it answered
    error: str = ""  # why it was not delivered
    final: bool = False  # no more retries: delivered, or given up


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one delivery."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def tenant_key(tenant: str) -> str:
    return f"tenant.{tenant}"


def job_url_key(tenant: str, job_id: str) -> str:
    return f"url.{tenant}.{job_id}"


def attempts_key(tenant: str, job_id: str) -> str:
    return f"attempts.{tenant}.{job_id}"


_ENCODER = msgspec.json.Encoder()
_HOOKS = msgspec.json.Decoder(TenantHooks)
_ATTEMPTS = msgspec.json.Decoder(list[WebhookAttempt])


def encode(value: object) -> bytes:
    return _ENCODER.encode(value)


def decode_tenant_hooks(data: bytes) -> TenantHooks:
    return _HOOKS.decode(data)


async def tenant_hooks(settings: KeyValue, tenant: str) -> TenantHooks:
    """A tenant's settings from KV ``webhook_settings`` (none set, or unreadable: empty)."""
    try:
        return decode_tenant_hooks((await settings.get(tenant_key(tenant))).value or b"{}")
    except (KeyNotFoundError, ValueError):
        return TenantHooks()


def decode_attempts(data: bytes) -> list[WebhookAttempt]:
    return _ATTEMPTS.decode(data)
