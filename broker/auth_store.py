"""Where the auth material lives: the keys directory, and the revocation list on the bus.

``AuthDir`` (``<data dir>/auth``, mode 0700) holds ``keys.json`` (every seed; 0600), the
server's ``server.conf`` (rewritten at each start), ``admin.creds`` (a controller-role user for
the local operator's own tools) and ``clients.json`` (which key each named client creds file
has, so ``vidfleet creds revoke NAME`` can name it). Whoever can read this directory owns the
deployment: in production it sits with the controller only.

Revocations are kept in KV bucket ``auth`` (key ``revocations``), so the controller (destroyed
machines) and ``vidfleet creds revoke`` (clients) extend one list, and the account JWT pushed
to the server always carries all of it. Each entry is dropped once the revoked user's JWTs
have all expired.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from broker.auth import AuthKeys, account_jwt, generate_keys, mint_user, server_config
from broker.config import Secret
from broker.creds import creds_text
from broker.subjects import AUTH_BUCKET

__all__ = ["AuthDir", "push_account_jwt", "republish_account", "revoke", "write_private"]

_REVOCATIONS_KEY = "revocations"


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
        if not self.admin_creds.exists():
            admin = mint_user(keys, "controller", "admin", expires_in_s=None)
            write_private(self.admin_creds, creds_text(admin).encode())
        return keys

    def keys(self) -> AuthKeys:
        return msgspec.json.decode(self.keys_file.read_bytes(), type=AuthKeys,
                                   dec_hook=_secret_hook)

    def register_client(self, name: str, public_key: str, expires_at: float | None) -> None:
        clients = self.clients()
        clients.setdefault(name, []).append({"key": public_key, "expires_at": expires_at})
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
    """Write a file only its owner can read (keys, creds)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


async def push_account_jwt(system: Client, jwt: str, timeout_s: float = 5.0) -> None:
    """Hand an updated account JWT to the server's resolver (as a system-account user)."""
    reply = await system.request("$SYS.REQ.CLAIMS.UPDATE", jwt.encode(), timeout=timeout_s)
    data = msgspec.json.decode(reply.data)
    if not isinstance(data, dict) or "error" in data:
        raise RuntimeError(f"account update refused: {data!r}")


async def _revocations(js: JetStreamContext) -> tuple[dict[str, list[float]], int | None]:
    kv = await js.key_value(AUTH_BUCKET)
    try:
        entry = await kv.get(_REVOCATIONS_KEY)
    except KeyNotFoundError:
        return {}, None
    return (msgspec.json.decode(entry.value) if entry.value else {}), entry.revision


async def revoke(js: JetStreamContext, system: Client, keys: AuthKeys, user_key: str, *,
                 until: float, now: float | None = None) -> None:
    """Refuse ``user_key``'s JWTs from now on (and close its connections) until ``until``,
    when its last JWT has expired anyway."""
    kv = await js.key_value(AUTH_BUCKET)
    while True:
        now = now or time.time()
        current, revision = await _revocations(js)
        current = {k: v for k, v in current.items() if v[1] > now}
        current[user_key] = [float(int(now) + 1), until]
        body = msgspec.json.encode(current)
        try:
            if revision is None:
                await kv.create(_REVOCATIONS_KEY, body)
            else:
                await kv.update(_REVOCATIONS_KEY, body, last=revision)
            break
        except KeyWrongLastSequenceError:
            continue  # someone else revoked at the same moment: merge with theirs
    # Push the list as it stands now, not as we wrote it: a concurrent revoker's older push
    # landing after ours must not be the last word.
    await republish_account(js, system, keys)


async def republish_account(js: JetStreamContext, system: Client, keys: AuthKeys) -> None:
    """Push the account JWT with every live revocation (after a server restart, its preloaded
    account JWT may predate some)."""
    now = time.time()
    current, _ = await _revocations(js)
    live = {k: int(v[0]) for k, v in current.items() if v[1] > now}
    await push_account_jwt(system, account_jwt(keys, live))
