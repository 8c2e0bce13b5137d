"""Operator-mode NATS auth: keys, account and user JWTs, creds.

Trust chain: an operator key signs every account: SYS (the server's own), FLEET (JetStream and
the control plane), AGENTS (every agent) and one account per tenant; what each account holds
and reaches is broker/accounts.py. FLEET's signer (controller, operator tools) is unscoped. The
agent signer is *scoped*: the permissions live in the AGENTS account JWT as a template, so a
user minted with it gets exactly the role's rights and no bug in the minting code can widen
them (the server refuses a scoped user JWT that carries permissions of its own). Tenant users
are signed by the client signer and have every right inside their own account, which reaches
nothing but its imports. A client user's JWT names its tenant in a tag (``vidfleet-tenant:``).

Getting a grant wrong is either a hole (a stranger's GPU machine reads the fleet's records, a
tenant another's results) or an outage (an agent denied its ack subject runs every job to its
lease end). tests/test_auth.py and tests/test_isolation.py run every role's real calls under
these grants and try the attacks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any, Literal

import nkeys
from msgspec import Struct
from nacl.signing import SigningKey

from broker.accounts import (
    Tenant,
    agent_template,
    agents_imports,
    fleet_exports,
    tenant_imports,
)
from broker.config import Secret
from broker.subjects import validate_tenant

__all__ = [
    "AGENTS_ACCOUNT",
    "FLEET_ACCOUNT",
    "TENANT_TAG",
    "AuthKeys",
    "Minted",
    "Role",
    "Tenant",
    "agents_account_jwt",
    "fleet_account_jwt",
    "generate_keys",
    "jwt_claims",
    "mint_user",
    "new_tenant",
    "operator_jwt",
    "public_key",
    "server_config",
    "system_account_jwt",
    "tenant_account_jwt",
    "user_jwt",
]

FLEET_ACCOUNT = "VIDFLEET"  # the name the single account had; its key did not change
AGENTS_ACCOUNT = "AGENTS"
TENANT_TAG = "vidfleet-tenant:"
# What one tenant may hold on the server at once, so that no tenant can exhaust it for all.
TENANT_MAX_CONNECTIONS = 256
TENANT_MAX_SUBSCRIPTIONS = 10_000
Role = Literal["controller", "agent", "client", "system"]
_JWT_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
              "wildcards": True, "conn": -1, "leaf": -1}


class AuthKeys(Struct, frozen=True, kw_only=True):
    """Every seed of the deployment. Held by the controller alone; never logged (Secret).
    ``account`` is FLEET's."""

    operator: Secret
    system_account: Secret
    account: Secret
    agents_account: Secret
    controller_signer: Secret
    agent_signer: Secret
    client_signer: Secret


class Minted(Struct, frozen=True, kw_only=True):
    name: str
    role: Role
    public_key: str  # the user's nkey: what a revocation names
    jwt: Secret
    seed: Secret
    expires_at: float | None
    account: str = ""  # the public key of the account the user belongs to


def _new_seed(prefix: int) -> Secret:
    raw = bytes(SigningKey.generate())
    return Secret(nkeys.encode_seed(raw, prefix).decode())


def generate_keys() -> AuthKeys:
    return AuthKeys(operator=_new_seed(nkeys.PREFIX_BYTE_OPERATOR),
                    system_account=_new_seed(nkeys.PREFIX_BYTE_ACCOUNT),
                    account=_new_seed(nkeys.PREFIX_BYTE_ACCOUNT),
                    agents_account=_new_seed(nkeys.PREFIX_BYTE_ACCOUNT),
                    controller_signer=_new_seed(nkeys.PREFIX_BYTE_ACCOUNT),
                    agent_signer=_new_seed(nkeys.PREFIX_BYTE_ACCOUNT),
                    client_signer=_new_seed(nkeys.PREFIX_BYTE_ACCOUNT))


def _pair(seed: Secret) -> nkeys.KeyPair:
    return nkeys.from_seed(bytearray(seed.reveal().encode()))


def public_key(seed: Secret) -> str:
    return str(_pair(seed).public_key.decode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_claims(token: str) -> dict[str, Any]:
    """A JWT's claims, read without checking its signature (the server checks those)."""
    body = token.split(".")[1]
    data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    if not isinstance(data, dict):
        raise ValueError("a JWT's claims are a JSON object")
    return data


def _encode(claims: dict[str, Any], signer: Secret, now: float) -> str:
    claims = {**claims, "iat": int(now), "iss": public_key(signer), "jti": ""}
    digest = hashlib.new("sha512_256", json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    head = _b64(json.dumps(_JWT_HEADER).encode())
    body = _b64(json.dumps(claims).encode())
    signature = _pair(signer).sign(f"{head}.{body}".encode())
    return f"{head}.{body}.{_b64(signature)}"


def operator_jwt(keys: AuthKeys, now: float | None = None) -> str:
    op = public_key(keys.operator)
    return _encode({"sub": op, "name": "vidfleet-operator",
                    "nats": {"system_account": public_key(keys.system_account),
                             "type": "operator", "version": 2}},
                   keys.operator, now or time.time())


def system_account_jwt(keys: AuthKeys, now: float | None = None) -> str:
    return _encode({"sub": public_key(keys.system_account), "name": "SYS",
                    "nats": {"limits": _UNLIMITED, "type": "account", "version": 2}},
                   keys.operator, now or time.time())


def _account(keys: AuthKeys, seed_or_key: Secret | str, name: str, *, jetstream: bool,
             signing_keys: list[Any], revocations: dict[str, int] | None, now: float | None,
             exports: list[dict[str, Any]] | None = None,
             imports: list[dict[str, Any]] | None = None,
             conn: int = -1, subs: int = -1) -> str:
    store = -1 if jetstream else 0
    limits = {**_UNLIMITED, "mem_storage": store, "disk_storage": store,
              "streams": store, "consumer": store, "conn": conn, "subs": subs}
    nats: dict[str, Any] = {"limits": limits, "type": "account", "version": 2,
                            "signing_keys": signing_keys,
                            "default_permissions": {"pub": {}, "sub": {}}}
    if exports:
        nats["exports"] = exports
    if imports:
        nats["imports"] = imports
    if revocations:
        nats["revocations"] = dict(revocations)
    # (A Secret is a str too: test for it first, or the seed itself would become the subject.)
    sub = public_key(seed_or_key) if isinstance(seed_or_key, Secret) else seed_or_key
    return _encode({"sub": sub, "name": name, "nats": nats}, keys.operator, now or time.time())


def fleet_account_jwt(keys: AuthKeys, revocations: dict[str, int] | None = None,
                      now: float | None = None) -> str:
    """FLEET: JetStream and the control plane; exports what the other accounts import.
    ``revocations`` maps a user's public key to a unix time: that user's JWTs issued at or
    before it are refused, and its live connections are closed."""
    return _account(keys, keys.account, FLEET_ACCOUNT, jetstream=True,
                    signing_keys=[public_key(keys.controller_signer)],
                    revocations=revocations, now=now, exports=fleet_exports())


def agents_account_jwt(keys: AuthKeys, revocations: dict[str, int] | None = None,
                       now: float | None = None) -> str:
    """AGENTS: every agent user, confined by the scoped agent signer's template."""
    scoped = {"kind": "user_scope", "key": public_key(keys.agent_signer), "role": "agent",
              "template": agent_template()}
    return _account(keys, keys.agents_account, AGENTS_ACCOUNT, jetstream=False,
                    signing_keys=[scoped], revocations=revocations, now=now,
                    imports=agents_imports(public_key(keys.account)))


def tenant_account_jwt(keys: AuthKeys, tenant: Tenant,
                       revocations: dict[str, int] | None = None,
                       now: float | None = None) -> str:
    """One tenant's account: its users have every right inside it, and it reaches nothing of
    the fleet but its own imports."""
    return _account(keys, tenant.account, f"tenant-{tenant.name}", jetstream=False,
                    signing_keys=[public_key(keys.client_signer)],
                    revocations=revocations, now=now,
                    imports=tenant_imports(public_key(keys.account), tenant.name),
                    conn=TENANT_MAX_CONNECTIONS, subs=TENANT_MAX_SUBSCRIPTIONS)


def new_tenant(name: str) -> Tenant:
    """A tenant with a fresh account key (its seed is not needed: the operator signs the
    account, the shared client signer signs its users)."""
    return Tenant(name=validate_tenant(name),
                  account=public_key(_new_seed(nkeys.PREFIX_BYTE_ACCOUNT)))


def mint_user(keys: AuthKeys, role: Role, name: str, *, expires_in_s: float | None,
              tenant: Tenant | None = None, now: float | None = None) -> Minted:
    """A new user (a fresh nkey) for ``role`` named ``name`` (an agent's id, a client's name);
    a client belongs to ``tenant``."""
    now = now or time.time()
    seed = _new_seed(nkeys.PREFIX_BYTE_USER)
    jwt, expires_at = user_jwt(keys, role, name, public_key(seed), expires_in_s=expires_in_s,
                               tenant=tenant, now=now)
    return Minted(name=name, role=role, public_key=public_key(seed), seed=seed,
                  jwt=Secret(jwt), expires_at=expires_at,
                  account=_account_of(keys, role, tenant))


def _account_of(keys: AuthKeys, role: Role, tenant: Tenant | None) -> str:
    if role == "client":
        if tenant is None:
            raise ValueError("a client user belongs to a tenant: pass tenant=")
        return tenant.account
    return public_key({"controller": keys.account, "agent": keys.agents_account,
                       "system": keys.system_account}[role])


def user_jwt(keys: AuthKeys, role: Role, name: str, user_key: str, *,
             expires_in_s: float | None, now: float,
             tenant: Tenant | None = None) -> tuple[str, float | None]:
    """A JWT for an existing user key: how a renewal works without the seed travelling."""
    signer = {"controller": keys.controller_signer, "agent": keys.agent_signer,
              "client": keys.client_signer, "system": keys.system_account}[role]
    nats: dict[str, Any] = {"type": "user", "version": 2}
    if role != "system":
        nats["issuer_account"] = _account_of(keys, role, tenant)
    if tenant is not None:
        nats["tags"] = [f"{TENANT_TAG}{tenant.name}"]
    if role in ("controller", "system", "client"):  # unscoped: the account's full rights
        nats |= {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}
    claims: dict[str, Any] = {"sub": user_key, "name": name, "nats": nats}
    expires_at = None
    if expires_in_s is not None:
        expires_at = int(now + expires_in_s)
        claims["exp"] = expires_at
    return _encode(claims, signer, now), (float(expires_at) if expires_at else None)


def server_config(keys: AuthKeys, resolver_dir: str, now: float | None = None) -> str:
    """nats-server settings for operator mode with a ``full`` resolver (account JWTs kept in
    ``resolver_dir``, updatable at run time: that is how a revocation or a new tenant reaches
    the server). The preloaded AGENTS account knows no tenant: whoever starts the stack pushes
    the current accounts at once (broker/auth_store.py ``publish_accounts``)."""
    preload = {public_key(keys.system_account): system_account_jwt(keys, now),
               public_key(keys.account): fleet_account_jwt(keys, now=now),
               public_key(keys.agents_account): agents_account_jwt(keys, now=now)}
    lines = [f"operator: {operator_jwt(keys, now)}",
             f"system_account: {public_key(keys.system_account)}",
             "resolver: {",
             "  type: full",
             f"  dir: {json.dumps(resolver_dir)}",
             "  allow_delete: false",
             "  interval: \"2m\"",
             "}",
             "resolver_preload: {"]
    lines += [f"  {pub}: {jwt}" for pub, jwt in preload.items()]
    lines.append("}")
    return "\n".join(lines) + "\n"
