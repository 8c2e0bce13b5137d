"""Fetching a job's inputs into its work directory, bounded in size and time.

``obj:<name>`` comes from the inputs bucket (verified by digest); an http(s) URL is streamed with
httpx through a transport that refuses, hop by hop, every address outside the public internet
and the networks the deployment allows (broker/url_transport.py); a refused URL fails the job
(``input_forbidden``, final). Missing objects, 4xx answers and oversize files are the job's
fault (final); timeouts, connection errors and 5xx are the network's (retryable).

What a failure says is shown to whoever submitted the job, so it never carries what was fetched,
a URL's ``user:password@`` or query string, or anything that tells an open port from a closed
one: a connection refused, reset, unreachable or silent before any HTTP answer all read alike.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import httpx
import nats.errors

from broker.jobs import parse_input_ref
from broker.objects import ObjectCorrupt, ObjectMissing
from broker.subjects import inputs_bucket
from broker.url_guard import scheme_problem, shown_url
from broker.url_transport import GuardedTransport, HostUnresolvable, UrlRefused
from gpu_agent.dispatch_link import DispatchLink, InputUnavailable
from gpu_agent.errors import JobFailure, invalid_input, retryable

__all__ = ["MAX_REDIRECTS", "InputFetcher"]

MAX_REDIRECTS = 5


class InputFetcher:
    def __init__(self, objects: DispatchLink, *, max_bytes: int, url_timeout_s: float,
                 url_total_timeout_s: float = 1800.0, url_min_bytes_per_s: float = 65536.0,
                 url_slow_window_s: float = 30.0,
                 transport: Callable[[], httpx.AsyncBaseTransport] = GuardedTransport,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``url_timeout_s`` bounds each connect and each read; ``url_total_timeout_s`` the
        whole download, so a server trickling a byte a minute cannot hold a paid machine
        forever; and a download slower than ``url_min_bytes_per_s`` over any
        ``url_slow_window_s`` fails long before that (a drip would hold the machine, and the
        jobs queued behind it, for the whole total). ``transport`` makes a fresh transport
        per download (closed with it); the default fetches only from public internet
        addresses. ``obj:`` inputs come through
        the dispatcher (``objects``), which serves only the inputs of the job held."""
        self._objects = objects
        self._max_bytes = max_bytes
        self._url_timeout_s = url_timeout_s
        self._url_total_timeout_s = url_total_timeout_s
        self._url_min_bytes_per_s = url_min_bytes_per_s
        self._url_slow_window_s = url_slow_window_s
        self._clock = clock
        self._transport = transport

    async def fetch(self, ref: str, dest: Path, *, label: str, tenant: str,
                    job_id: str) -> Path:
        """Fetch ``ref`` into ``dest``; ``obj:`` names are the tenant's inputs, read for the
        job held."""
        kind, where = parse_input_ref(ref)
        if kind == "object":
            await self._fetch_object(where, dest, label, tenant, job_id)
        else:
            await self._fetch_url(where, dest, label)
        return dest

    async def _fetch_object(self, name: str, dest: Path, label: str, tenant: str,
                            job_id: str) -> None:
        bucket = inputs_bucket(tenant)
        try:
            await self._objects.fetch_input(dest, tenant=tenant, job_id=job_id, name=name,
                                            max_size_bytes=self._max_bytes)
        except ObjectMissing:
            raise invalid_input(
                f"{label}: no object {name!r} in the {bucket!r} bucket "
                "(upload it first, or check the name after 'obj:')"
            ) from None
        except ValueError as exc:
            raise invalid_input(f"{label}: {exc}") from None
        except ObjectCorrupt as exc:
            raise retryable("input_corrupt", f"{label}: {exc}") from None
        except TimeoutError:
            raise retryable("input_timeout", f"{label}: object download stalled") from None
        except (InputUnavailable, nats.errors.Error) as exc:
            raise retryable("input_unavailable", f"{label}: the {bucket!r} bucket could not "
                            f"be read ({str(exc) or type(exc).__name__})") from None

    async def _fetch_url(self, url: str, dest: Path, label: str) -> None:
        what = f"{label}: {shown_url(url)}"
        if problem := scheme_problem(url):  # httpx would take file:/x for a relative URL
            raise JobFailure("input_forbidden", f"{label}: {problem}")
        answered = False  # False until the response headers are in
        try:
            async with asyncio.timeout(self._url_total_timeout_s), \
                    httpx.AsyncClient(transport=self._transport(), trust_env=False,
                                      timeout=httpx.Timeout(self._url_timeout_s),
                                      follow_redirects=True,
                                      max_redirects=MAX_REDIRECTS) as http, \
                    http.stream("GET", url) as resp:
                answered = True
                await self._save(resp, dest, what)
        except UrlRefused as exc:
            raise _refused(url, what, exc) from None
        except TimeoutError:
            raise retryable("input_timeout", f"{what}: the download took over "
                            f"{self._url_total_timeout_s:g}s") from None
        except HostUnresolvable as exc:
            raise retryable("input_unavailable",
                            f"{what}: the host name {exc.host} does not resolve") from None
        except httpx.TooManyRedirects:
            raise invalid_input(f"{what} redirects more than {MAX_REDIRECTS} times") from None
        except httpx.InvalidURL:
            raise invalid_input(f"{what} is not a valid URL") from None
        except httpx.DecodingError:
            raise invalid_input(f"{what}: the response body could not be decoded") from None
        except httpx.TransportError as exc:
            raise self._transport_failure(what, exc, answered) from None

    def _transport_failure(self, what: str, exc: httpx.TransportError,
                           answered: bool) -> JobFailure:
        """Before any HTTP answer, every failure reads the same: telling refused from reset
        or silent would make URL inputs a port scanner."""
        if not answered:
            return retryable("input_unavailable", f"{what}: no HTTP answer (the connection "
                             "was refused, reset, unreachable or timed out)")
        if isinstance(exc, httpx.ReadTimeout):
            return retryable("input_timeout", f"{what} sent nothing for "
                             f"{self._url_timeout_s:g}s")
        return retryable("input_unavailable", f"{what}: the connection broke during the "
                         "download")

    async def _save(self, resp: httpx.Response, dest: Path, what: str) -> None:
        if resp.status_code >= 500 or resp.status_code == 429:
            raise retryable("input_unavailable", f"{what} answered HTTP {resp.status_code}")
        if resp.status_code >= 400:
            raise invalid_input(f"{what} answered HTTP {resp.status_code}")
        declared = int(resp.headers.get("content-length") or 0)
        if declared > self._max_bytes:
            raise invalid_input(self._too_big(what, declared))
        written = 0
        marks: deque[tuple[float, int]] = deque([(self._clock(), 0)])  # (when, bytes so far)
        with open(dest, "wb") as out:
            async for block in resp.aiter_bytes():  # as it arrives: the pace check sees it
                written += len(block)
                if written > self._max_bytes:
                    raise invalid_input(self._too_big(what, written))
                out.write(block)
                self._check_pace(marks, written, what)

    def _check_pace(self, marks: deque[tuple[float, int]], written: int, what: str) -> None:
        """Fail a download whose last ``url_slow_window_s`` brought too few bytes."""
        now, window = self._clock(), self._url_slow_window_s
        while len(marks) > 1 and marks[1][0] <= now - window:
            marks.popleft()  # keep the newest mark at least a window old
        since, then = marks[0]
        if now - since >= window and (written - then) / (now - since) < self._url_min_bytes_per_s:
            raise retryable("input_too_slow", f"{what} sent {written - then} bytes in the last "
                            f"{now - since:.0f}s, under the minimum of "
                            f"{self._url_min_bytes_per_s:g} bytes/s")
        marks.append((now, written))

    def _too_big(self, what: str, size: int) -> str:
        return f"{what} is over {size} bytes, more than the limit of {self._max_bytes} bytes"


def _refused(url: str, what: str, exc: UrlRefused) -> JobFailure:
    try:
        first = shown_url(str(httpx.URL(url)))  # as httpx sent it: normalised
    except httpx.InvalidURL:
        first = ""
    hop = "" if exc.url == first else f" redirects to {exc.url}, which"
    return JobFailure("input_forbidden", f"{what}{hop} is refused: {exc.reason}")
