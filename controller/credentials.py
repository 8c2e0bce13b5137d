"""The controller's credential authority: per-agent credentials, renewal, revocation.

Each machine gets its own user (named after its label, so the agent role's template confines
it to its own subjects) with a bounded lifetime; its agent asks ``fleet.renew.<agent_id>`` for
a fresh JWT for the same key before expiry, answered only while the machine is on record and
not being destroyed; destroying a machine revokes its key, and the server then closes its live
connection at once (broker/auth_store.py keeps the shared revocation list).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import nats.errors
from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from broker.auth import AuthKeys, Minted, mint_user, public_key, user_jwt
from broker.auth_store import revoke
from broker.fleet import RenewReply, encode
from broker.subjects import renew_subject

__all__ = ["CredentialAuthority", "agent_env"]

_JWT_PIECE = 250  # Vast.ai caps each environment value at 256 characters


def agent_env(minted: Minted) -> dict[str, str]:
    """A machine's credentials as environment variables: the seed, and the JWT in pieces."""
    jwt = minted.jwt.reveal()
    env = {"VIDFLEET_NATS_SEED": minted.seed.reveal()}
    for n, start in enumerate(range(0, len(jwt), _JWT_PIECE)):
        env[f"VIDFLEET_NATS_JWT_{n}"] = jwt[start:start + _JWT_PIECE]
    return env


class CredentialAuthority:
    def __init__(self, keys: AuthKeys, *, agent_lifetime_s: float,
                 known_agent: Callable[[str], str | None],
                 clock: Callable[[], float] = time.time) -> None:
        """``known_agent(agent_id)`` returns that machine's user key while it may renew (on
        record and not being destroyed), else None."""
        self.keys = keys
        self._lifetime_s = agent_lifetime_s
        self._known_agent = known_agent
        self._clock = clock
        self._sub: Subscription | None = None
        self._unrevoked: dict[str, str] = {}  # label -> user key still to revoke

    def queue_revocation(self, label: str, user_key: str) -> None:
        """Revoke at the next ``flush_revocations`` (and after it, until it works)."""
        self._unrevoked[label] = user_key

    async def flush_revocations(self, js: JetStreamContext, system: Client) -> str | None:
        """Cut destroyed or vanished machines' agents off the bus; an alarm when the server
        could not be told (retried next time): their credentials must be worth nothing to
        whoever holds the disk."""
        for label, key in list(self._unrevoked.items()):
            try:
                await self.revoke(js, system, key)
            except (nats.errors.Error, TimeoutError, RuntimeError) as exc:
                return f"revoking {label}'s credentials failed, retrying: {exc}"
            del self._unrevoked[label]
            logger.bind(instance_id=label).info("agent credentials revoked")
        return None

    def mint_agent(self, agent_id: str) -> Minted:
        return mint_user(self.keys, "agent", agent_id, expires_in_s=self._lifetime_s,
                         now=self._clock())

    async def revoke(self, js: JetStreamContext, system: Client, user_key: str) -> None:
        """Refuse this agent's JWTs from now on and close its connections."""
        await revoke(js, system, self.keys, user_key, account=public_key(self.keys.agents_account),
                     until=self._clock() + self._lifetime_s + 60.0, now=self._clock())

    async def serve_renewals(self, nc: Client) -> None:
        self._sub = await nc.subscribe(renew_subject("*"), cb=self._on_renew)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on_renew(self, msg: Msg) -> None:
        agent_id = msg.subject.rsplit(".", 1)[-1]
        user_key = self._known_agent(agent_id)
        if user_key is None:
            reply = RenewReply(error=f"{agent_id} is not a machine on record")
            logger.warning("renewal refused for {agent}", agent=agent_id)
        else:
            jwt, expires_at = user_jwt(self.keys, "agent", agent_id, user_key,
                                       expires_in_s=self._lifetime_s, now=self._clock())
            reply = RenewReply(jwt=jwt, expires_at=expires_at or 0.0)
        if msg.reply:
            await msg.respond(encode(reply))
