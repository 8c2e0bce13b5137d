"""The controller's credential authority: per-agent credentials, renewal, revocation.

Each machine gets its own user (named after its label, so the agent role's template confines
it to its own subjects) with a short lifetime; the agent asks for a fresh JWT for the same
key before it expires (``fleet.renew.<agent_id>``, answered only for machines on record), and
destroying a machine revokes its key: the server then closes its live connection at once.

Revocations live in the account JWT, which only the operator key can sign; the updated JWT is
pushed to the server's resolver as the system account. A revocation is kept until the revoked
user's last JWT has expired, then dropped, so the account JWT does not grow without bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from broker.auth import AuthKeys, Minted, account_jwt, mint_user, user_jwt
from broker.fleet import RenewReply, encode
from broker.subjects import renew_subject

__all__ = ["CredentialAuthority", "agent_env", "push_account_jwt"]

_JWT_PIECE = 250  # Vast.ai caps each environment value at 256 characters


def agent_env(minted: Minted) -> dict[str, str]:
    """A machine's credentials as environment variables: the seed, and the JWT in pieces."""
    jwt = minted.jwt.reveal()
    env = {"VIDFLEET_NATS_SEED": minted.seed.reveal()}
    for n, start in enumerate(range(0, len(jwt), _JWT_PIECE)):
        env[f"VIDFLEET_NATS_JWT_{n}"] = jwt[start:start + _JWT_PIECE]
    return env


async def push_account_jwt(system: Client, jwt: str, timeout_s: float = 5.0) -> None:
    """Hand an updated account JWT to the server's resolver (as a system-account user)."""
    reply = await system.request("$SYS.REQ.CLAIMS.UPDATE", jwt.encode(), timeout=timeout_s)
    data = msgspec.json.decode(reply.data)
    if not isinstance(data, dict) or "error" in data:
        raise RuntimeError(f"account update refused: {data!r}")


class CredentialAuthority:
    def __init__(self, keys: AuthKeys, *, agent_lifetime_s: float,
                 known_agent: Callable[[str], str | None],
                 clock: Callable[[], float] = time.time) -> None:
        """``known_agent(agent_id)`` returns that machine's user public key if it is on record
        (renewals for anything else are refused)."""
        self._keys = keys
        self._lifetime_s = agent_lifetime_s
        self._known_agent = known_agent
        self._clock = clock
        self._revoked: dict[str, tuple[int, float]] = {}  # user key -> (revoked at, until)
        self._sub: Subscription | None = None

    def mint_agent(self, agent_id: str) -> Minted:
        return mint_user(self._keys, "agent", agent_id, expires_in_s=self._lifetime_s,
                         now=self._clock())

    def account_jwt(self) -> str:
        now = self._clock()
        self._revoked = {k: v for k, v in self._revoked.items() if v[1] > now}
        return account_jwt(self._keys, {k: at for k, (at, _) in self._revoked.items()}, now=now)

    async def revoke(self, system: Client, user_key: str) -> None:
        """Refuse this user's JWTs from now on and close its live connections."""
        now = self._clock()
        self._revoked[user_key] = (int(now) + 1, now + self._lifetime_s + 60.0)
        await push_account_jwt(system, self.account_jwt())

    async def serve_renewals(self, nc: Client) -> None:
        self._sub = await nc.subscribe(renew_subject("*"), cb=self._on_renew)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on_renew(self, msg: Msg) -> None:
        agent_id = msg.subject.rsplit(".", 1)[-1]
        user_key = self._known_agent(agent_id)
        if user_key is None or user_key in self._revoked:
            reply = RenewReply(error=f"{agent_id} is not a machine on record")
            logger.warning("renewal refused for {agent}", agent=agent_id)
        else:
            jwt, expires_at = user_jwt(self._keys, "agent", agent_id, user_key,
                                       expires_in_s=self._lifetime_s, now=self._clock())
            reply = RenewReply(jwt=jwt, expires_at=expires_at or 0.0)
        if msg.reply:
            await msg.respond(encode(reply))
