"""The one kind of nats-server the tests run: operator mode, set up as ``vidfleet up`` sets it
up (keys made in an auth directory, the server's config written from them, the production
account layout: FLEET for the topology, the gateway and the dispatcher; AGENTS; one account per
tenant). Every test that talks to a server talks to this one, so each role's permissions are
exercised by every path.

``nats_server`` is the bare server; conftest's ``js`` adds the topology and tenant ``default``
(the stack of the end-to-end tests); ``secure`` adds tenants ``alice`` and ``bob`` and the
control plane instead (the isolation and attack tests).

A call that crosses no import simply has nowhere to go: inside a tenant or the agents' account
it meets no responder (or times out), and a publish lands in the caller's own account. A call
the agent role's template forbids gets the server's "permissions violation" error, which
``Session.denied`` waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client as Nats
from nats.aio.client import RawCredentials

from broker.auth import AuthKeys, Minted, Role, Tenant, mint_user
from broker.auth_store import AuthDir, create_tenant, write_private
from broker.creds import LiveCredentials, creds_text
from broker.server import EmbeddedServer
from broker.subjects import FLEET_API_PREFIX, agent_inbox_prefix
from broker.topology import ensure_tenant, ensure_topology
from client.api import Client
from controller.credentials import CredentialAuthority
from tests.control_plane import TEST_TOPOLOGY, ControlPlane, control_plane

__all__ = ["TENANTS", "Secure", "Session", "connect_as", "ctl", "nats_server",
           "secure", "session", "start_secure_server", "tenant_client"]

TENANTS = ("alice", "bob")


@dataclass
class Secure:
    server: EmbeddedServer
    auth: AuthDir
    keys: AuthKeys
    tenants: dict[str, Tenant] = field(default_factory=dict)
    control: ControlPlane | None = None  # set by the ``secure`` fixture

    @property
    def url(self) -> str:
        return self.server.url

    def mint(self, role: Role, name: str, *, tenant: str | None = None,
             expires_in_s: float | None = 3600) -> Minted:
        """A user of ``role`` named ``name`` (an agent's id is its name); a client of
        ``tenant``, which must have been created."""
        return mint_user(self.keys, role, name, expires_in_s=expires_in_s,
                         tenant=self.tenants[tenant] if tenant else None)

    def authority(self) -> CredentialAuthority:
        """The controller's agent credentials (10-minute lifetimes) for machines none of
        which is on record: every renewal is refused."""
        return CredentialAuthority(self.keys, agent_lifetime_s=600, known_agent=lambda _: None)

    def credentials(self, role: Role, name: str, *,
                    tenant: str | None = None) -> LiveCredentials:
        minted = self.mint(role, name, tenant=tenant)
        return LiveCredentials(minted.jwt.reveal(), minted.seed)

    def creds_file(self, role: Role, name: str, *, tenant: str | None = None) -> Path:
        """A .creds file (mode 0600, in the auth directory) for ``--creds`` and
        ``VIDFLEET_CREDS_FILE``."""
        path = self.auth.path / f"{role}-{name}.creds"
        write_private(path, creds_text(self.mint(role, name, tenant=tenant)).encode())
        return path


def start_secure_server(directory: Path, extra_args: tuple[str, ...] = ()) -> Secure:
    """Keys in ``directory/auth`` (as ``vidfleet up`` keeps them), JetStream in
    ``directory/nats``; ``extra_args`` for nats-server (TLS, say)."""
    auth = AuthDir(directory / "auth")
    keys = auth.ensure()
    server = EmbeddedServer(directory / "nats",
                            extra_args=["-c", str(auth.server_conf), *extra_args])
    return Secure(server.start(), auth, keys)


@dataclass
class Session:
    nc: Nats
    minted: Minted
    errors: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def denied(self, subject: str, action: Callable[[], Awaitable[object]]) -> None:
        """Run ``action`` and wait for the server's permissions violation naming ``subject``."""
        with contextlib.suppress(TimeoutError, nats.errors.Error):
            await asyncio.wait_for(action(), 1)  # a refused call never answers

        async def seen() -> None:
            while not any(subject.lower() in e.lower() and "permissions violation" in e
                          for e in self.errors):
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(seen(), 5)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[Secure]:
    made = start_secure_server(tmp_path)
    yield made
    made.server.stop()


@pytest.fixture
async def secure(nats_server: Secure) -> AsyncIterator[Secure]:
    """The fleet's topology, its gateway and dispatcher (as the controller runs them) and
    two tenants."""
    async with session(nats_server, "controller", "ctl") as ctl, \
            session(nats_server, "system", "sys") as system:
        js = ctl.nc.jetstream()
        await ensure_topology(js, TEST_TOPOLOGY, tenants=())
        for name in TENANTS:
            nats_server.tenants[name] = await create_tenant(js, system.nc, nats_server.keys,
                                                            name)
            await ensure_tenant(js, TEST_TOPOLOGY, name)
        async with control_plane(js, ctl.nc) as services:
            nats_server.control = services
            yield nats_server


@pytest.fixture
async def ctl(secure: Secure) -> AsyncIterator[Session]:
    """A controller's session (FLEET): what the tests look at the fleet's state with."""
    async with session(secure, "controller", "ctl") as s:
        yield s


async def connect_as(secure: Secure, minted: Minted, errors: list[str] | None = None,
                     changed: asyncio.Event | None = None, **options: object) -> Nats:
    async def on_error(exc: Exception) -> None:
        if errors is not None:
            errors.append(str(exc))
        if changed is not None:
            changed.set()

    if minted.role == "agent":
        options.setdefault("inbox_prefix", agent_inbox_prefix(minted.name))
    return await nats.connect(secure.url, user_credentials=RawCredentials(creds_text(minted)),
                              error_cb=on_error, max_reconnect_attempts=0,
                              allow_reconnect=False, **options)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def session(secure: Secure, role: str, name: str, *, tenant: str | None = None,
                  expires_in_s: float | None = 600) -> AsyncIterator[Session]:
    minted = secure.mint(role, name, tenant=tenant, expires_in_s=expires_in_s)  # type: ignore[arg-type]
    out = Session(nc=None, minted=minted)  # type: ignore[arg-type]
    out.nc = await connect_as(secure, minted, out.errors, out.changed)
    try:
        yield out
    finally:
        await out.nc.close()


def tenant_client(s: Session, tenant: str) -> Client:
    """Our client library on a tenant's session, as ``Client.connect`` would set it up."""
    return Client(s.nc, tenant=tenant, api_prefix=FLEET_API_PREFIX)
