"""The one place Vast.ai HTTP happens: auth, pacing, retries and error classification.

Every call goes through ``VastHttp.call``. It sends the key as a Bearer header only (never in a
URL), paces each endpoint to a minimum interval, retries 429/502/503/504 and transport failures
with jittered exponential backoff (honouring ``Retry-After`` up to 60 s) *only* when the caller
says the call is idempotent, and turns every failure into one ``VastError`` whose ``kind`` says
what it means and whether trying again later can help. The key never appears in an error or a
log line: messages are built from the endpoint name and the server's words, with the key
scrubbed from those too.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, TypeVar

import httpx
import msgspec
from loguru import logger

from broker.config import Secret
from controller.providers.base import ProviderError

__all__ = ["ErrorKind", "MinInterval", "VastError", "VastHttp", "backoff_delay_s",
           "classify_error"]

T = TypeVar("T")

# auth: the key is wrong or lacks the right; account: credit, billing, spend limits;
# quota: the daily search quota; rate_limited / unavailable: 429, 5xx or the network;
# offer_gone: the ask was rented or vanished; not_found: the thing does not exist (any more);
# rejected: the server said no for another reason; bad_response: a 2xx we cannot read;
# ambiguous: a create may or may not have happened (raised by the provider, not here).
ErrorKind = Literal["auth", "account", "quota", "rate_limited", "unavailable", "offer_gone",
                    "not_found", "rejected", "bad_response", "ambiguous"]
_RETRYABLE_KINDS = frozenset({"rate_limited", "unavailable", "bad_response"})
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_MAX_RETRY_AFTER_S = 60.0
_ACCOUNT_MARKERS = ("credit", "balance", "spend_rate_limit", "billing")
_OFFER_GONE_MARKERS = ("no_such_ask", "not available", "3603", "3907")


class VastError(ProviderError):
    """A failed Vast.ai call. ``status`` is None when no HTTP answer came back; ``sent`` is
    False only when the request certainly never reached the server (connect failed)."""

    def __init__(self, message: str, *, kind: ErrorKind, status: int | None = None,
                 error: str = "", sent: bool = True) -> None:
        super().__init__(message, retryable=kind in _RETRYABLE_KINDS)
        self.kind: ErrorKind = kind
        self.status = status
        self.error = error
        self.sent = sent


class _ErrorBody(msgspec.Struct):
    success: bool | None = None
    error: str | None = None
    msg: str | None = None
    message: str | None = None
    detail: str | None = None


class _Outcome(msgspec.Struct):
    success: bool | None = None


_error_decoder = msgspec.json.Decoder(_ErrorBody)
_outcome_decoder = msgspec.json.Decoder(_Outcome)


def _read_error(content: bytes) -> tuple[str, str]:
    """(error code, human text) from any of the body shapes Vast.ai uses, or plain text."""
    try:
        body = _error_decoder.decode(content)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "", content.decode("utf-8", "replace").strip()[:300]
    return body.error or "", (body.msg or body.message or body.detail or "").strip()[:300]


def classify_error(status: int, error: str, msg: str) -> ErrorKind:
    """What an error answer means, whatever endpoint it came from. Pure; first match wins."""
    text = f"{error} {msg}".lower()
    if error == "auth_error" or msg == "Invalid user key" or status == 401:
        return "auth"  # whatever the status: Vast.ai also answers a bad key with 404
    if error == "search_quota_exceeded":
        return "quota"
    if status == 429 or error == "rate_limit_exceeded":
        return "rate_limited"
    if status >= 500:
        return "unavailable"  # before the account words: "load balancer" is no billing issue
    if any(marker in text for marker in _ACCOUNT_MARKERS):
        return "account"
    if error == "no_such_ask" or any(marker in text for marker in _OFFER_GONE_MARKERS):
        return "offer_gone"
    if status in (404, 410) or error in ("not_found", "no_such_instance"):
        return "not_found"
    if error == "not_authorized" or (status == 403 and not error):
        return "auth"
    return "rejected"


def backoff_delay_s(attempt: int, *, base_s: float, cap_s: float, jitter: float) -> float:
    """Exponential backoff with "equal jitter": half the step fixed, half random (jitter is a
    draw from [0, 1)). Pure."""
    step_s = min(cap_s, base_s * 2.0 ** attempt)
    return step_s / 2.0 + step_s / 2.0 * jitter


def _retry_after_s(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare enough to fall back to our own backoff


class MinInterval:
    """Client-side pacing: at most one call per ``intervals_s[endpoint]`` seconds. A slot is
    reserved before waiting, so concurrent callers queue instead of bursting."""

    def __init__(self, intervals_s: Mapping[str, float], *, clock: Callable[[], float],
                 sleep: Callable[[float], Awaitable[None]]) -> None:
        self._intervals_s = dict(intervals_s)
        self._clock = clock
        self._sleep = sleep
        self._next_at: dict[str, float] = {}

    async def wait(self, endpoint: str) -> None:
        interval_s = self._intervals_s.get(endpoint, 0.0)
        if interval_s <= 0:
            return
        now = self._clock()
        at = max(now, self._next_at.get(endpoint, now))
        self._next_at[endpoint] = at + interval_s
        if at > now:
            await self._sleep(at - now)


_CREDENTIAL_SHAPES = re.compile(
    r"S[UAO][A-Z2-7]{50,}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}")


class VastHttp:
    def __init__(self, *, base_url: str, api_key: Secret, timeout_s: float, max_retries: int,
                 backoff_base_s: float, backoff_cap_s: float,
                 min_interval_s: Mapping[str, float],
                 transport: httpx.AsyncBaseTransport | None = None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] | None = None,
                 jitter: Callable[[], float] = random.random) -> None:
        self._key = api_key
        self._max_retries = max_retries
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._sleep = sleep or asyncio.sleep
        self._jitter = jitter
        self._pace = MinInterval(min_interval_s, clock=clock, sleep=self._sleep)
        self._client = httpx.AsyncClient(
            base_url=base_url, transport=transport, timeout=timeout_s, follow_redirects=False,
            headers={"Authorization": f"Bearer {api_key.reveal()}",
                     "Accept": "application/json", "User-Agent": "vidfleet-controller"})

    async def aclose(self) -> None:
        await self._client.aclose()

    async def sleep(self, delay_s: float) -> None:
        await self._sleep(delay_s)

    def backoff_s(self, attempt: int) -> float:
        return backoff_delay_s(attempt, base_s=self._backoff_base_s,
                               cap_s=self._backoff_cap_s, jitter=self._jitter())

    async def call(self, method: str, path: str, *, endpoint: str, idempotent: bool,
                   response_type: type[T], body: Any = None,
                   params: Mapping[str, Any] | None = None) -> T:
        """One logical call. ``idempotent=False`` (creating an instance) means exactly one
        attempt: a retried create after a lost answer rents a second paid machine."""
        content = msgspec.json.encode(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if content is not None else None
        # Query values as the official client sends them: strings as-is, the rest as JSON.
        query = {k: v if isinstance(v, str) else msgspec.json.encode(v).decode()
                 for k, v in (params or {}).items()}
        attempt = 0
        while True:
            await self._pace.wait(endpoint)
            retry_after: float | None = None
            try:
                resp = await self._client.request(method, path, content=content,
                                                  headers=headers, params=query)
            except httpx.TransportError as exc:
                sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout
                                      | httpx.PoolTimeout)
                err = VastError(f"vast {endpoint}: no answer ({type(exc).__name__})",
                                kind="unavailable", sent=sent)
            else:
                if resp.is_success:
                    return self._decode(resp, endpoint, response_type)
                err = self._error(endpoint, resp.status_code, resp.content)
                retry_after = _retry_after_s(resp.headers)
            delay_s = self._retry_delay_s(err, retry_after, attempt, idempotent)
            if delay_s is None:
                raise err
            logger.warning("vast {} failed ({}), retry {} in {:.2f}s", endpoint, err,
                           attempt + 1, delay_s)
            await self._sleep(delay_s)
            attempt += 1

    def _retry_delay_s(self, err: VastError, retry_after: float | None, attempt: int,
                       idempotent: bool) -> float | None:
        if not idempotent or attempt >= self._max_retries:
            return None
        if err.status is not None and err.status not in _RETRY_STATUSES:
            return None
        if err.kind not in ("rate_limited", "unavailable"):
            return None  # e.g. a 429 that is really a daily quota, or an auth error
        if retry_after is not None:
            return retry_after if retry_after <= _MAX_RETRY_AFTER_S else None
        return self.backoff_s(attempt)

    def _error(self, endpoint: str, status: int, content: bytes) -> VastError:
        error, msg = _read_error(content)
        msg = self._scrub(msg)
        error = self._scrub(error)
        kind = classify_error(status, error, msg)
        code = f", {error}" if error else ""
        return VastError(f"vast {endpoint}: {kind} (HTTP {status}{code}): {msg}", kind=kind,
                         status=status, error=error)

    def _decode(self, resp: httpx.Response, endpoint: str, response_type: type[T]) -> T:
        try:
            # A 200 with success:false is a refusal, not a yes.
            if _outcome_decoder.decode(resp.content).success is False:
                raise self._error(endpoint, resp.status_code, resp.content)
            return msgspec.json.decode(resp.content, type=response_type)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise VastError(f"vast {endpoint}: unreadable answer (HTTP {resp.status_code}): "
                            f"{self._scrub(str(exc))[:200]}", kind="bad_response",
                            status=resp.status_code) from None

    def _scrub(self, text: str) -> str:
        """No secret in an error: the account key, and any NATS seed or JWT (a machine's
        credentials, should Vast.ai ever echo a create request's env back)."""
        key = self._key.reveal()
        text = text.replace(key, "***") if key else text
        return _CREDENTIAL_SHAPES.sub("***", text)
