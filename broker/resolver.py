"""The server's account resolver, as the system account sees it: account JWTs pushed and
looked up (``$SYS.REQ.CLAIMS.UPDATE``, ``$SYS.REQ.ACCOUNT.<key>.CLAIMS.LOOKUP``)."""

from __future__ import annotations

from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client

from broker.auth import jwt_claims

__all__ = ["push_account_jwt"]


async def push_account_jwt(system: Client, jwt: str, timeout_s: float = 5.0) -> bool:
    """Hand an account JWT to the server's resolver (as a system-account user), unless the
    server already holds the same claims; whether it was pushed.

    A push is not free: the server rebuilds the account's exports, which drops every reply
    still owed across them. Pushing FLEET loses each agent's and tenant's requests in
    flight (reports, input and upload chunks, a pull waiting for events: their callers see
    timeouts); tests/test_account_pushes.py shows it. So an account is pushed only when its
    claims changed, and callers name only the accounts a change touches: revoking an agent
    pushes AGENTS alone, and a restarted controller pushes nothing."""
    claims = jwt_claims(jwt)
    if await _held_claims(system, str(claims["sub"]), timeout_s) == _content(claims):
        return False
    reply = await system.request("$SYS.REQ.CLAIMS.UPDATE", jwt.encode(), timeout=timeout_s)
    data = msgspec.json.decode(reply.data)
    if not isinstance(data, dict) or "error" in data:
        raise RuntimeError(f"account update refused: {data!r}")
    return True


async def _held_claims(system: Client, account: str, timeout_s: float) -> dict[str, Any] | None:
    """What the server's resolver holds for ``account`` (its claims, less the issue time);
    None when it holds nothing or cannot say, and the caller pushes."""
    try:
        reply = await system.request(f"$SYS.REQ.ACCOUNT.{account}.CLAIMS.LOOKUP", b"",
                                     timeout=timeout_s)
        return _content(jwt_claims(reply.data.decode())) if reply.data else None
    except (nats.errors.Error, TimeoutError, ValueError, IndexError):
        return None


def _content(claims: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in claims.items() if k not in ("iat", "jti")}
