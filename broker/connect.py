"""One way to open a NATS connection, with the settings long-running processes need.

nats-py's defaults give up for good after about two minutes of outage and log tracebacks on
server errors; an agent that quietly stops reconnecting strands its machine while it bills.
``tls://`` means TLS or no connection (broker/tls.py): nats-py alone would send CONNECT, with
our JWT and nonce signature, in plaintext to a server whose INFO does not ask for TLS.
"""

from __future__ import annotations

import ssl
import time
from typing import Any

import nats.errors
from loguru import logger
from nats.aio.client import Client

from broker.creds import LiveCredentials
from broker.tls import TlsNotOffered, TlsOnlyClient, server_urls, tls_required

__all__ = ["connect"]


async def connect(
    url: str,
    *,
    name: str,
    inbox_prefix: str | None = None,
    credentials: LiveCredentials | None = None,
    tls_ca_file: str = "",
    max_reconnect_attempts: int = -1,
    **options: Any,
) -> Client:
    """Connect to ``url`` (comma-separated for a cluster), reconnecting forever by default;
    with ``credentials`` on an operator-mode server. ``tls://`` URLs always verify the
    server's certificate and host name (against ``tls_ca_file`` when given), and a server
    that does not offer TLS is sent nothing: each attempt fails with ``TlsNotOffered``, which
    is raised when the attempts run out. A URL mixing ``tls://`` and plaintext servers raises
    ``ConfigError`` before anything is dialled."""

    tls = tls_required(url)
    last: dict[str, float] = {}
    refused: list[TlsNotOffered] = []  # the latest attempt's, if it was refused for no TLS

    async def on_error(exc: Exception) -> None:
        refused[:] = [exc] if isinstance(exc, TlsNotOffered) else []
        # While a server is down this fires on every reconnect attempt; say it once a minute.
        text, now = str(exc) or type(exc).__name__, time.monotonic()
        if now - last.get(text, float("-inf")) >= 60.0:
            last[text] = now
            logger.warning("nats error: {error}", error=text)

    async def on_disconnect() -> None:
        logger.info("nats disconnected")

    async def on_reconnect() -> None:
        logger.info("nats reconnected")

    kwargs: dict[str, Any] = dict(
        servers=server_urls(url),
        name=name,
        max_reconnect_attempts=max_reconnect_attempts,
        reconnect_time_wait=0.5,
        ping_interval=20,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )
    if inbox_prefix:
        kwargs["inbox_prefix"] = inbox_prefix
    if tls_ca_file:  # a private CA; without it, tls:// servers are checked against the system's
        kwargs["tls"] = ssl.create_default_context(cafile=tls_ca_file)
    if credentials is not None:  # re-read at every reconnect: a renewed JWT takes effect
        kwargs["user_jwt_cb"] = credentials.user_jwt
        kwargs["signature_cb"] = credentials.sign
    kwargs.update(options)
    client = TlsOnlyClient() if tls else Client()
    try:
        await client.connect(**kwargs)
    except nats.errors.NoServersError as exc:
        if refused:  # say why, not just "no servers available"
            raise refused[0] from exc
        raise
    return client
