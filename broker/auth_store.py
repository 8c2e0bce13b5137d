"""Where the auth material lives: the keys directory, and the revocation list on the bus.

``AuthDir`` (``<data dir>/auth``, mode 0700) holds ``keys.json`` (every seed; 0600), the
server's ``server.conf`` (rewritten at each start), ``admin.creds`` (an expiring FLEET user for
the local operator's own tools) and ``clients.json`` (which key each named client creds file
has, so ``vidfleet creds revoke NAME`` can name it). Whoever can read this directory owns the
deployment: in production it sits with the controller only.

Revocations and tenants are kept in KV bucket ``auth`` (keys ``revocations`` and ``tenants``),
written only from the FLEET account (the controller, ``vidfleet creds``): no tenant or agent
account imports it. Every account JWT pushed to the server is built from both, so every tenant
has its account and each account carries all of its revocations. A change pushes only the
accounts it touches (a push costs the account's importers their replies in flight).
Each revocation is dropped once the revoked user's JWTs have all expired.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Collection
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from broker.auth import (
    AuthKeys,
    Minted,
    Tenant,
    agents_account_jwt,
    fleet_account_jwt,
    generate_keys,
    mint_user,
    new_tenant,
    public_key,
    server_config,
    tenant_account_jwt,
)
from broker.config import Secret
from broker.creds import LiveCredentials, creds_text
from broker.resolver import push_account_jwt
from broker.subjects import AUTH_BUCKET, validate_tenant

__all__ = ["ADMIN_NAME", "FOREVER", "AuthDir", "AuthRecordUnreadable", "create_tenant",
           "publish_accounts", "revoke", "revoke_listed", "revoke_many",
           "tenants", "write_private"]

ADMIN_NAME = "admin"  # its keys are listed with the clients', under this name
ADMIN_LIFETIME_S = 30 * 86400.0
ADMIN_RENEW_BEFORE_S = 7 * 86400.0  # `vidfleet up` writes a new one this long before expiry
FOREVER = 2.0**62  # "until" of a revoked user whose JWT never expires: never pruned
_REVOCATIONS_KEY = "revocations"
_TENANTS_KEY = "tenants"


class AuthDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys_file = path / "keys.json"
        self.server_conf = path / "server.conf"
        self.admin_creds = path / "admin.creds"
        self.clients_file = path / "clients.json"

    def ensure(self) -> AuthKeys:
        """Create the keys once (never replaced: that would orphan every creds file), then
        write the server config and the admin creds if missing."""
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        if not self.keys_file.exists():
            write_private(self.keys_file, msgspec.json.encode(_keys_doc(generate_keys())))
        keys = self.keys()
        (self.path / "jwt").mkdir(exist_ok=True)
        write_private(self.server_conf, server_config(keys, str(self.path / "jwt")).encode())
        if self._admin_expires_within(ADMIN_RENEW_BEFORE_S):
            self._list_old_admin()
            self.write_admin(keys)
        return keys

    def _list_old_admin(self) -> None:
        """An admin.creds from before they expired was never listed: list its key now, so
        ``vidfleet creds admin`` can revoke it."""
        if not self.admin_creds.exists():
            return
        old = LiveCredentials.from_creds(self.admin_creds.read_text()).claims
        listed = {e.get("key") for e in self.clients().get(ADMIN_NAME, [])}
        if old.get("sub") not in listed:
            account = old.get("nats", {}).get("issuer_account", "")
            self.register_client(ADMIN_NAME, str(old.get("sub")), old.get("exp"), account)

    def write_admin(self, keys: AuthKeys, lifetime_s: float = ADMIN_LIFETIME_S) -> Minted:
        """A new ``admin.creds`` (a fresh key). The keys of earlier ones stay listed, so
        ``vidfleet creds admin`` can revoke them."""
        admin = mint_user(keys, "controller", "admin", expires_in_s=lifetime_s)
        write_private(self.admin_creds, creds_text(admin).encode())
        self.register_client(ADMIN_NAME, admin.public_key, admin.expires_at, admin.account)
        return admin

    def _admin_expires_within(self, seconds: float) -> bool:
        if not self.admin_creds.exists():
            return True
        expires_at = LiveCredentials.from_creds(self.admin_creds.read_text()).expires_at
        return expires_at is None or expires_at - time.time() < seconds

    def keys(self) -> AuthKeys:
        doc = json.loads(self.keys_file.read_text())
        if "agents_account" not in doc:  # made before agents had an account of their own
            doc["agents_account"] = generate_keys().agents_account.reveal()
            write_private(self.keys_file, json.dumps(doc).encode())
        return msgspec.convert(doc, type=AuthKeys, dec_hook=_secret_hook)

    def register_client(self, name: str, public_key: str, expires_at: float | None,
                        account: str) -> None:
        clients = self.clients()
        clients.setdefault(name, []).append({"key": public_key, "expires_at": expires_at,
                                             "account": account})
        write_private(self.clients_file, json.dumps(clients, indent=2).encode())

    def clients(self) -> dict[str, list[dict[str, object]]]:
        if not self.clients_file.exists():
            return {}
        data: dict[str, list[dict[str, object]]] = json.loads(self.clients_file.read_text())
        return data


def _keys_doc(keys: AuthKeys) -> dict[str, str]:
    return {f: getattr(keys, f).reveal() for f in keys.__struct_fields__}


def _secret_hook(type_: type, obj: object) -> object:
    if type_ is Secret and isinstance(obj, str):
        return Secret(obj)
    raise NotImplementedError


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read (keys, creds), whole or not at all: a crash
    mid-write must not leave a truncated ``keys.json``, the deployment's root of trust."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class AuthRecordUnreadable(RuntimeError):
    """An entry of the auth bucket is not what we write. Nothing is pushed or rewritten
    until an operator repairs it: starting it afresh would drop revocations, and every
    revoked credential would work again."""


async def _read(js: JetStreamContext, key: str) -> tuple[dict[str, Any], int | None]:
    """A JSON object kept under ``key`` in the auth bucket; ``{}`` when missing."""
    kv = await js.key_value(AUTH_BUCKET)
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return {}, None
    try:
        data = msgspec.json.decode(entry.value or b"{}")
    except msgspec.DecodeError:
        data = None
    if not isinstance(data, dict):
        raise AuthRecordUnreadable(
            f"the auth bucket's {key!r} entry (revision {entry.revision}) is not a JSON "
            "object: repair it by hand (clients.json and the controller's log name the keys "
            "revoked); until then no account is updated")
    return data, entry.revision


async def _update(js: JetStreamContext, key: str,
                  change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Compare-and-set ``key``: concurrent writers (the controller and a CLI) merge."""
    kv = await js.key_value(AUTH_BUCKET)
    while True:
        current, revision = await _read(js, key)
        body = msgspec.json.encode(change(current))
        try:
            if revision is None:
                await kv.create(key, body)
            else:
                await kv.update(key, body, last=revision)
            return
        except KeyWrongLastSequenceError:
            continue  # someone else wrote at the same moment: merge with theirs


async def tenants(js: JetStreamContext) -> list[Tenant]:
    data, _ = await _read(js, _TENANTS_KEY)
    found = []
    for name, account in sorted(data.items()):
        if isinstance(account, str):
            found.append(Tenant(name=name, account=account))
    return found


async def create_tenant(js: JetStreamContext, system: Client, keys: AuthKeys,
                        name: str) -> Tenant:
    """The tenant ``name`` (made once: an existing tenant keeps its account) and its account
    pushed to the server. The caller creates its object stores (broker/topology.py
    ``ensure_tenant``)."""
    validate_tenant(name)
    made = new_tenant(name)
    await _update(js, _TENANTS_KEY, lambda d: d if name in d else {**d, name: made.account})
    tenant = next(t for t in await tenants(js) if t.name == name)
    await publish_accounts(js, system, keys, only={tenant.account})
    return tenant


async def revoke(js: JetStreamContext, system: Client, keys: AuthKeys, user_key: str, *,
                 account: str, until: float, now: float | None = None) -> None:
    """Refuse ``user_key``'s JWTs (a user of ``account``, a public key) from now on, and close
    its connections, until ``until``, when its last JWT has expired anyway."""
    await revoke_many(js, system, keys, {user_key: (account, until)}, now=now)


async def revoke_listed(js: JetStreamContext, system: Client, keys: AuthKeys,
                        issued: list[dict[str, object]], *, keep: str = "") -> int:
    """Revoke the users of ``issued`` (entries of ``AuthDir.clients()``) still valid, except
    ``keep``; one that never expires stays revoked for good. Returns how many."""
    now = time.time()
    chosen: dict[str, tuple[str, float]] = {}
    for entry in issued:
        expires_at = entry.get("expires_at")
        until = float(expires_at) if isinstance(expires_at, (int, float)) else FOREVER
        if until > now and entry.get("key") != keep:
            chosen[str(entry.get("key"))] = (str(entry.get("account", "")), until)
    if chosen:
        await revoke_many(js, system, keys, chosen, now=now)
    return len(chosen)


async def revoke_many(js: JetStreamContext, system: Client, keys: AuthKeys,
                      users: dict[str, tuple[str, float]], *, now: float | None = None) -> None:
    """``revoke`` for several users at once: user key -> (account, until); one push of each
    account they belong to, and of no other."""
    stamp = now or time.time()

    def add(current: dict[str, Any]) -> dict[str, Any]:
        # Expired entries go; one we cannot read stays (dropping it could revive a key).
        live = {k: v for k, v in current.items() if (e := _entry(v)) is None or e[1] > stamp}
        return {**live, **{k: [float(int(stamp) + 1), until, account]
                           for k, (account, until) in users.items()}}

    await _update(js, _REVOCATIONS_KEY, add)
    # Push the lists as they stand now, not as we wrote them: a concurrent revoker's older
    # push landing after ours must not be the last word.
    await publish_accounts(js, system, keys, only={account for account, _ in users.values()})


def _entry(value: object) -> tuple[float, float, str] | None:
    """``[revoked_at, until, account]``; entries from before accounts were split name none
    (they were agents or clients of one account that no longer holds either)."""
    if not isinstance(value, list) or len(value) not in (2, 3):
        return None
    try:
        return float(value[0]), float(value[1]), str(value[2]) if len(value) == 3 else ""
    except (TypeError, ValueError):
        return None


async def publish_accounts(js: JetStreamContext, system: Client, keys: AuthKeys, *,
                           only: Collection[str] | None = None) -> None:
    """Push FLEET, AGENTS and every tenant account (or those of ``only``, public keys) with
    their live revocations, each only if the server holds other claims for it (after a
    server restart the preloaded JWTs know no tenant and may predate some revocations).
    Pushing an account the change does not touch would cost its importers their replies in
    flight (broker/resolver.py)."""
    now = time.time()
    current, _ = await _read(js, _REVOCATIONS_KEY)
    by_account: dict[str, dict[str, int]] = {}
    for user_key, value in current.items():
        entry = _entry(value)
        if entry and entry[1] > now:
            by_account.setdefault(entry[2], {})[user_key] = int(entry[0])
    jwts = {public_key(keys.account): partial(fleet_account_jwt, keys),
            public_key(keys.agents_account): partial(agents_account_jwt, keys)}
    for tenant in await tenants(js):
        jwts[tenant.account] = partial(tenant_account_jwt, keys, tenant)
    for account, jwt in jwts.items():
        if only is None or account in only:
            await push_account_jwt(system, jwt(by_account.get(account)))
