"""The httpx transport URL inputs are fetched (and webhooks posted) through: every hop's
address checked, then pinned.

For each request (the first and every redirect, which httpx sends through the transport one by
one) the host is resolved once, every address it resolves to is checked against the policy in
broker/url_guard.py, and the connection is made to the checked address itself: the URL's
host is replaced by that IP, while the Host header and TLS (SNI and certificate verification)
keep the host name. A second DNS answer (rebinding) is never asked for, so it cannot move the
connection elsewhere. Each host name gets its own connection pool, so a TLS connection verified
for one name is never reused for another. Connecting anywhere before the check, or to an
address other than the checked one, would let a job read the agent's private network.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Sequence
from ipaddress import ip_address

import httpx

from broker.url_guard import (
    ALLOW_NETWORKS_VAR,
    IPAddress,
    Network,
    address_problem,
    scheme_problem,
    shown_url,
)

__all__ = ["GuardedTransport", "HostUnresolvable", "Resolver", "UrlRefused", "resolve_host"]

Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]


class UrlRefused(Exception):
    """A request the policy refuses; ``url`` is the refused hop, already fit to show."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(reason)
        self.url = url
        self.reason = reason


class HostUnresolvable(Exception):
    def __init__(self, host: str) -> None:
        super().__init__(f"{host} does not resolve")
        self.host = host


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """The system resolver's addresses for ``host``, in its order of preference."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise HostUnresolvable(host) from None
    found: list[IPAddress] = []
    for info in infos:
        ip = ip_address(info[4][0])
        if ip not in found:
            found.append(ip)
    return found


class GuardedTransport(httpx.AsyncBaseTransport):
    def __init__(self, allowed: Sequence[Network] = (), *, resolve: Resolver = resolve_host,
                 inner: Callable[[], httpx.AsyncBaseTransport] = httpx.AsyncHTTPTransport,
                 setting: str = ALLOW_NETWORKS_VAR) -> None:
        """``allowed``: non-public networks that may be fetched from anyway (``setting``
        names where they are configured, for the refusal's message). ``inner`` makes the
        transport that sends a request once its URL names the checked IP."""
        self._allowed = tuple(allowed)
        self._setting = setting
        self._resolve = resolve
        self._inner = inner
        self._per_host: dict[str, httpx.AsyncBaseTransport] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https") or not url.raw_host:
            raise UrlRefused(shown_url(str(url)), scheme_problem(str(url)) or
                             "only http(s) URLs with a host name or address are fetched")
        host = url.raw_host.decode("ascii")
        https = url.scheme == "https"
        addresses = await self._checked_addresses(request, host, url.port or (443 if https
                                                                              else 80))
        extensions = dict(request.extensions)  # a redirect reuses them: never mutate
        if https and not _is_ip(host):
            extensions["sni_hostname"] = host
        if host not in self._per_host:
            self._per_host[host] = self._inner()
        transport = self._per_host[host]
        for n, ip in enumerate(addresses, start=1):
            pinned = httpx.Request(request.method, url.copy_with(host=str(ip)),
                                   headers=request.headers, stream=request.stream,
                                   extensions=extensions)
            try:
                return await transport.handle_async_request(pinned)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                if n == len(addresses):
                    raise
        raise AssertionError("unreachable: a host resolves to at least one address")

    async def _checked_addresses(self, request: httpx.Request, host: str,
                                 port: int) -> Sequence[IPAddress]:
        if _is_ip(host):
            addresses: Sequence[IPAddress] = [ip_address(host)]
        else:
            timeout_s = request.extensions.get("timeout", {}).get("connect")
            try:
                async with asyncio.timeout(timeout_s):
                    addresses = await self._resolve(host, port)
            except TimeoutError:
                raise httpx.ConnectTimeout("name resolution timed out",
                                           request=request) from None
            if not addresses:
                raise HostUnresolvable(host)
        for ip in addresses:
            if kind := address_problem(ip, self._allowed):
                said = f"{ip} is" if _is_ip(host) else f"{host} resolves to {ip},"
                raise UrlRefused(shown_url(str(request.url)), (
                    f"{said} {kind}; addresses outside the public internet are refused "
                    f"unless {self._setting} allows them"))
        return addresses

    async def aclose(self) -> None:
        transports, self._per_host = list(self._per_host.values()), {}
        for transport in transports:
            await transport.aclose()


def _is_ip(host: str) -> bool:
    try:
        ip_address(host)
    except ValueError:
        return False
    return True
