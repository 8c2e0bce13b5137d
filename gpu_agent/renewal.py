"""Keeping an agent's short-lived credentials alive: renew at half the remaining life.

The controller answers ``fleet.renew.<agent_id>`` with a fresh JWT for the same key (only for
machines on record that are not being destroyed). Without renewal the server closes the
connection at expiry, and nats-py would not come back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
import nats.errors
from nats.aio.client import Client

from broker.creds import LiveCredentials
from broker.fleet import decode_renew_reply
from broker.subjects import renew_subject

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["keep_credentials"]


async def keep_credentials(nc: Client, credentials: LiveCredentials, agent_id: str,
                           log: Logger, *, clock: Callable[[], float] = time.time) -> None:
    """Renew the JWT at half its remaining life and reconnect with it, until cancelled. The
    job in hand carries over (same client: its holds and reports go out after the
    reconnect). A failed or refused renewal is retried at the next half-life."""
    while (expires_at := credentials.expires_at) is not None:
        await asyncio.sleep(max(0.5, (expires_at - clock()) / 2))
        try:
            reply = decode_renew_reply((await nc.request(
                renew_subject(agent_id), b"", timeout=10)).data)
        except (nats.errors.Error, TimeoutError, msgspec.DecodeError) as exc:
            log.warning("credential renewal failed, retrying: {error}",
                        error=str(exc) or type(exc).__name__)
            continue
        if not reply.jwt:
            log.error("credential renewal refused: {error}", error=reply.error)
            continue
        credentials.renew(reply.jwt)
        await nc.force_reconnect()
        log.info("credentials renewed until {until}", until=reply.expires_at)
