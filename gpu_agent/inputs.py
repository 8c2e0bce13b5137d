"""Fetching a job's inputs into its work directory, bounded in size and time.

``obj:<name>`` comes from the inputs bucket (verified by digest); an http(s) URL is streamed with
httpx. Missing objects, 4xx answers and oversize files are the job's fault (final); timeouts,
connection errors and 5xx are the network's (retryable).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from nats.js import JetStreamContext

from broker.jobs import parse_input_ref
from broker.objects import ObjectCorrupt, ObjectMissing, download
from broker.subjects import INPUTS_BUCKET
from gpu_agent.errors import invalid_input, retryable

__all__ = ["InputFetcher"]


class InputFetcher:
    def __init__(self, js: JetStreamContext, *, max_bytes: int, url_timeout_s: float,
                 url_total_timeout_s: float = 1800.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        """``url_timeout_s`` bounds each read; ``url_total_timeout_s`` the whole download, so a
        server trickling a byte a minute cannot hold a paid machine forever."""
        self._js = js
        self._max_bytes = max_bytes
        self._url_timeout_s = url_timeout_s
        self._url_total_timeout_s = url_total_timeout_s
        self._transport = transport

    async def fetch(self, ref: str, dest: Path, *, label: str) -> Path:
        kind, where = parse_input_ref(ref)
        if kind == "object":
            await self._fetch_object(where, dest, label)
        else:
            await self._fetch_url(where, dest, label)
        return dest

    async def _fetch_object(self, name: str, dest: Path, label: str) -> None:
        try:
            await download(self._js, INPUTS_BUCKET, name, dest, max_size_bytes=self._max_bytes)
        except ObjectMissing:
            raise invalid_input(
                f"{label}: no object {name!r} in the {INPUTS_BUCKET!r} bucket "
                "(upload it first, or check the name after 'obj:')"
            ) from None
        except ValueError as exc:
            raise invalid_input(f"{label}: {exc}") from None
        except ObjectCorrupt as exc:
            raise retryable("input_corrupt", f"{label}: {exc}") from None
        except TimeoutError:
            raise retryable("input_timeout", f"{label}: object download stalled") from None

    async def _fetch_url(self, url: str, dest: Path, label: str) -> None:
        shown = url.split("?", 1)[0]  # query strings often carry signatures; never echo them
        timeout = httpx.Timeout(self._url_timeout_s)
        try:
            async with asyncio.timeout(self._url_total_timeout_s), \
                    httpx.AsyncClient(transport=self._transport, timeout=timeout,
                                      follow_redirects=True, max_redirects=5) as http, \
                    http.stream("GET", url) as resp:
                await self._save(resp, dest, f"{label}: {shown}")
        except TimeoutError:
            raise retryable("input_timeout", f"{label}: downloading {shown} took over "
                            f"{self._url_total_timeout_s:.0f}s") from None
        except httpx.TimeoutException:
            raise retryable("input_timeout", f"{label}: {shown} timed out") from None
        except httpx.TransportError as exc:
            raise retryable("input_unavailable",
                            f"{label}: cannot reach {shown} ({type(exc).__name__})") from None

    async def _save(self, resp: httpx.Response, dest: Path, what: str) -> None:
        if resp.status_code >= 500 or resp.status_code == 429:
            raise retryable("input_unavailable", f"{what} answered HTTP {resp.status_code}")
        if resp.status_code >= 400:
            raise invalid_input(f"{what} answered HTTP {resp.status_code}")
        declared = int(resp.headers.get("content-length") or 0)
        if declared > self._max_bytes:
            raise invalid_input(self._too_big(what, declared))
        written = 0
        with open(dest, "wb") as out:
            async for block in resp.aiter_bytes(1 << 20):
                written += len(block)
                if written > self._max_bytes:
                    raise invalid_input(self._too_big(what, written))
                out.write(block)

    def _too_big(self, what: str, size: int) -> str:
        return f"{what} is over {size} bytes, more than the limit of {self._max_bytes} bytes"
