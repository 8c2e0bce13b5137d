"""Operator-mode NATS auth: keys, account and user JWTs, role permissions, creds files.

Trust chain: an operator key signs two accounts (SYS for the server's own use, APP for
vidfleet); APP carries three signing keys. The controller's key is unscoped (its users have the
account's full rights). The agent and client keys are *scoped*: the permissions live in the
account JWT as a template, so a user minted with such a key gets exactly the role's rights and
no bug in the minting code can widen them (the server refuses a scoped user JWT that carries
permissions of its own). ``{{name()}}`` in a template is the user JWT's name: an agent's id,
so an agent can only publish its own events and heartbeats and read its own inbox.

Getting a grant wrong is either a hole (a stranger's GPU machine reads other agents' jobs, or
deletes a stream) or an outage (an agent denied its ack subject runs every job to its lease end).
The tests run every role's real calls under these grants and assert each denial.
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

from broker.config import Secret
from broker.subjects import (
    CONTROLLER_HEARTBEAT_SUBJECT,
    EVENTS_STREAM,
    INPUTS_BUCKET,
    JOBS_CONSUMER,
    JOBS_STREAM,
    JOBSTATE_BUCKET,
    RESULTS_BUCKET,
    agent_inbox_prefix,
    client_inbox_prefix,
    renew_subject,
)

__all__ = [
    "ACCOUNT_NAME",
    "AuthKeys",
    "Minted",
    "Role",
    "account_jwt",
    "agent_permissions",
    "client_permissions",
    "generate_keys",
    "mint_user",
    "operator_jwt",
    "public_key",
    "server_config",
    "system_account_jwt",
    "user_jwt",
]

ACCOUNT_NAME = "VIDFLEET"
Role = Literal["controller", "agent", "client", "system"]
_JWT_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
              "wildcards": True, "conn": -1, "leaf": -1}


class AuthKeys(Struct, frozen=True, kw_only=True):
    """Every seed of the deployment. Held by the controller alone; never logged (Secret)."""

    operator: Secret
    system_account: Secret
    account: Secret
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


def _new_seed(prefix: int) -> Secret:
    raw = bytes(SigningKey.generate())
    return Secret(nkeys.encode_seed(raw, prefix).decode())


def generate_keys() -> AuthKeys:
    return AuthKeys(operator=_new_seed(nkeys.PREFIX_BYTE_OPERATOR),
                    system_account=_new_seed(nkeys.PREFIX_BYTE_ACCOUNT),
                    account=_new_seed(nkeys.PREFIX_BYTE_ACCOUNT),
                    controller_signer=_new_seed(nkeys.PREFIX_BYTE_ACCOUNT),
                    agent_signer=_new_seed(nkeys.PREFIX_BYTE_ACCOUNT),
                    client_signer=_new_seed(nkeys.PREFIX_BYTE_ACCOUNT))


def _pair(seed: Secret) -> nkeys.KeyPair:
    return nkeys.from_seed(bytearray(seed.reveal().encode()))


def public_key(seed: Secret) -> str:
    return str(_pair(seed).public_key.decode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


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


def agent_permissions() -> dict[str, Any]:
    """An agent: pull and ack on the jobs consumer, its own events and heartbeats, read and
    write the job-state KV (any key: KV subjects cannot be limited to the jobs it holds, so
    an agent could overwrite another job's state), read inputs, write results (no purge: it
    could not be limited to one name), its own inbox, its commands and the controller's
    heartbeat. Nothing else."""
    me = "{{name()}}"
    return {
        "pub": {"allow": [
            f"$JS.API.CONSUMER.INFO.{JOBS_STREAM}.{JOBS_CONSUMER}",
            f"$JS.API.CONSUMER.MSG.NEXT.{JOBS_STREAM}.{JOBS_CONSUMER}",
            f"$JS.ACK.{JOBS_STREAM}.{JOBS_CONSUMER}.>",
            f"events.*.*.{me}",
            f"agents.{me}.heartbeat",
            renew_subject(me),
            f"$JS.API.STREAM.MSG.GET.{EVENTS_STREAM}",
            f"$JS.API.DIRECT.GET.{EVENTS_STREAM}.>",
            *_kv_rw(JOBSTATE_BUCKET),
            *_object_read(INPUTS_BUCKET),
            *_object_write(RESULTS_BUCKET),
        ]},
        "sub": {"allow": [f"{agent_inbox_prefix(me)}.>", f"agents.{me}.control",
                          CONTROLLER_HEARTBEAT_SUBJECT]},
        "subs": -1, "data": -1, "payload": -1,
    }


def client_permissions() -> dict[str, Any]:
    """A client: submit jobs, follow events, write inputs, read results; its own inbox. No
    fleet subjects (heartbeats, commands, the fleet bucket), no pulling jobs, no stream
    management, no publishing events."""
    me = "{{name()}}"
    return {
        "pub": {"allow": [
            "jobs.*.*",
            f"$JS.API.STREAM.INFO.{JOBS_STREAM}",
            f"$JS.API.STREAM.MSG.GET.{JOBS_STREAM}",
            f"$JS.API.DIRECT.GET.{JOBS_STREAM}.>",
            f"$JS.API.STREAM.INFO.{EVENTS_STREAM}",
            f"$JS.API.STREAM.MSG.GET.{EVENTS_STREAM}",
            f"$JS.API.DIRECT.GET.{EVENTS_STREAM}.>",
            f"$JS.API.CONSUMER.CREATE.{EVENTS_STREAM}",
            f"$JS.API.CONSUMER.CREATE.{EVENTS_STREAM}.>",
            f"$JS.API.CONSUMER.DELETE.{EVENTS_STREAM}.>",
            f"$JS.API.CONSUMER.INFO.{EVENTS_STREAM}.>",
            f"$JS.FC.{EVENTS_STREAM}.>",
            *_object_write(INPUTS_BUCKET),
            *_object_read(RESULTS_BUCKET),
        ]},
        "sub": {"allow": [f"{client_inbox_prefix(me)}.>", "events.*.*.*"]},
        "subs": -1, "data": -1, "payload": -1,
    }


def _kv_rw(bucket: str) -> list[str]:
    stream = f"KV_{bucket}"
    return [f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.MSG.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}.>", f"$KV.{bucket}.>"]


def _object_read(bucket: str) -> list[str]:
    stream = f"OBJ_{bucket}"
    return [f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.MSG.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}.>", f"$JS.API.CONSUMER.CREATE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}.>", f"$JS.API.CONSUMER.DELETE.{stream}.>",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>", f"$JS.FC.{stream}.>",
            f"$JS.ACK.{stream}.>"]


def _object_write(bucket: str) -> list[str]:
    stream = f"OBJ_{bucket}"
    return [f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.MSG.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}.>", f"$O.{bucket}.C.>", f"$O.{bucket}.M.>"]


def account_jwt(keys: AuthKeys, revocations: dict[str, int] | None = None,
                now: float | None = None) -> str:
    """The vidfleet account. ``revocations`` maps a user's public key to a unix time: that
    user's JWTs issued at or before it are refused, and its live connections are closed."""
    limits = {**_UNLIMITED, "mem_storage": -1, "disk_storage": -1, "streams": -1,
              "consumer": -1}
    scoped = [{"kind": "user_scope", "key": public_key(keys.agent_signer), "role": "agent",
               "template": agent_permissions()},
              {"kind": "user_scope", "key": public_key(keys.client_signer), "role": "client",
               "template": client_permissions()}]
    nats: dict[str, Any] = {"limits": limits, "type": "account", "version": 2,
                            "signing_keys": [public_key(keys.controller_signer), *scoped],
                            "default_permissions": {"pub": {}, "sub": {}}}
    if revocations:
        nats["revocations"] = dict(revocations)
    return _encode({"sub": public_key(keys.account), "name": ACCOUNT_NAME, "nats": nats},
                   keys.operator, now or time.time())


def mint_user(keys: AuthKeys, role: Role, name: str, *, expires_in_s: float | None,
              now: float | None = None) -> Minted:
    """A new user (a fresh nkey) for ``role`` named ``name`` (an agent's id, a client's name)."""
    now = now or time.time()
    seed = _new_seed(nkeys.PREFIX_BYTE_USER)
    jwt, expires_at = user_jwt(keys, role, name, public_key(seed), expires_in_s=expires_in_s,
                               now=now)
    return Minted(name=name, role=role, public_key=public_key(seed), seed=seed,
                  jwt=Secret(jwt), expires_at=expires_at)


def user_jwt(keys: AuthKeys, role: Role, name: str, user_key: str, *,
             expires_in_s: float | None, now: float) -> tuple[str, float | None]:
    """A JWT for an existing user key: how a renewal works without the seed travelling."""
    signer, account = {
        "controller": (keys.controller_signer, keys.account),
        "agent": (keys.agent_signer, keys.account),
        "client": (keys.client_signer, keys.account),
        "system": (keys.system_account, keys.system_account),
    }[role]
    nats: dict[str, Any] = {"type": "user", "version": 2}
    if signer is not account:
        nats["issuer_account"] = public_key(account)
    if role in ("controller", "system"):  # unscoped signers: the account's full rights
        nats |= {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}
    claims: dict[str, Any] = {"sub": user_key, "name": name, "nats": nats}
    expires_at = None
    if expires_in_s is not None:
        expires_at = int(now + expires_in_s)
        claims["exp"] = expires_at
    return _encode(claims, signer, now), (float(expires_at) if expires_at else None)


def server_config(keys: AuthKeys, resolver_dir: str, now: float | None = None) -> str:
    """nats-server settings for operator mode with a ``full`` resolver (account JWTs kept in
    ``resolver_dir``, updatable at run time: that is how a revocation reaches the server)."""
    preload = {public_key(keys.system_account): system_account_jwt(keys, now),
               public_key(keys.account): account_jwt(keys, now=now)}
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
