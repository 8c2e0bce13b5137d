"""What a connection presents on an operator-mode server: a user JWT and the nkey seed that
signs the server's nonce, as a ``.creds`` file or as credentials re-read at every reconnect."""

from __future__ import annotations

import base64
from typing import Any

import nkeys

from broker.auth import TENANT_TAG, Minted, jwt_claims
from broker.config import Secret

__all__ = ["LiveCredentials", "creds_of", "creds_text"]


def creds_text(minted: Minted) -> str:
    """The ``.creds`` file every NATS client reads (nats-py: ``user_credentials=path``)."""
    return creds_of(minted.jwt.reveal(), minted.seed)


def creds_of(jwt: str, seed: Secret) -> str:
    return (f"-----BEGIN NATS USER JWT-----\n{jwt}\n"
            "------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{seed.reveal()}\n"
            "------END USER NKEY SEED------\n")


class LiveCredentials:
    """A user's credentials as a connection re-reads them at every (re)connect: ``renew``
    swaps in a fresh JWT for the same key, and the next reconnect authenticates with it.

    nats-py closes a connection for good when the server expires its JWT, so a long-lived
    process renews ahead of time and forces a reconnect itself (``Client.force_reconnect``);
    its subscriptions, pending publishes and held messages carry over on the same client.
    """

    def __init__(self, jwt: str, seed: Secret) -> None:
        self._jwt = jwt
        self._seed = seed

    @classmethod
    def from_creds(cls, text: str) -> LiveCredentials:
        blocks = [part.split("-----")[0].strip() for part in text.split("-----\n")[1:]]
        jwt = next(b for b in blocks if b.startswith("ey"))
        seed = next(b for b in blocks if b.startswith("SU"))
        return cls(jwt, Secret(seed))

    def renew(self, jwt: str) -> None:
        self._jwt = jwt

    @property
    def claims(self) -> dict[str, Any]:
        return jwt_claims(self._jwt)

    @property
    def name(self) -> str:
        return str(self.claims.get("name", ""))

    @property
    def tenant(self) -> str | None:
        """The tenant a client user belongs to (its JWT's tag); None for the fleet's own."""
        tags = self.claims.get("nats", {}).get("tags") or []
        found = [str(t).removeprefix(TENANT_TAG) for t in tags if str(t).startswith(TENANT_TAG)]
        return found[0] if found else None

    @property
    def expires_at(self) -> float | None:
        exp = self.claims.get("exp")
        return float(exp) if exp else None

    def user_jwt(self) -> bytes:
        return self._jwt.encode()

    def sign(self, nonce: str) -> bytes:
        key = nkeys.from_seed(bytearray(self._seed.reveal().encode()))
        return base64.b64encode(key.sign(nonce.encode()))

    def __repr__(self) -> str:
        return f"LiveCredentials(name={self.name!r}, jwt=***, seed=***)"
