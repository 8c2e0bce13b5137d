"""A real operator-mode nats-server with the production account layout, for tests that use
credentials: FLEET (topology, the gateway, the dispatcher), AGENTS, and tenants ``alice``
and ``bob``.

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

from broker.auth import AuthKeys, Minted, Tenant, generate_keys, mint_user, server_config
from broker.auth_store import create_tenant
from broker.creds import creds_text
from broker.server import EmbeddedServer
from broker.subjects import FLEET_API_PREFIX, agent_inbox_prefix
from broker.topology import ensure_tenant, ensure_topology
from client.api import Client
from tests.conftest import TEST_TOPOLOGY
from tests.control_plane import ControlPlane, control_plane

__all__ = ["TENANTS", "Secure", "Session", "connect_as", "ctl", "secure", "session",
           "tenant_client"]

TENANTS = ("alice", "bob")


@dataclass
class Secure:
    server: EmbeddedServer
    keys: AuthKeys
    tenants: dict[str, Tenant] = field(default_factory=dict)
    control: ControlPlane | None = None  # set by the ``secure`` fixture

    @property
    def url(self) -> str:
        return self.server.url


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
def secure_server(tmp_path: Path) -> Iterator[Secure]:
    keys = generate_keys()
    (tmp_path / "jwt").mkdir()
    conf = tmp_path / "server.conf"
    conf.write_text(server_config(keys, str(tmp_path / "jwt")))
    server = EmbeddedServer(tmp_path / "nats", extra_args=["-c", str(conf)]).start()
    yield Secure(server, keys)
    server.stop()


@pytest.fixture
async def secure(secure_server: Secure) -> AsyncIterator[Secure]:
    """The fleet's topology, its gateway and dispatcher (as the controller runs them) and
    two tenants."""
    async with session(secure_server, "controller", "ctl") as ctl, \
            session(secure_server, "system", "sys") as system:
        js = ctl.nc.jetstream()
        await ensure_topology(js, TEST_TOPOLOGY, tenants=())
        for name in TENANTS:
            tenant = await create_tenant(js, system.nc, secure_server.keys, name)
            await ensure_tenant(js, TEST_TOPOLOGY, name)
            secure_server.tenants[name] = tenant
        async with control_plane(js, ctl.nc) as services:
            secure_server.control = services
            yield secure_server


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
    minted = mint_user(secure.keys, role, name, expires_in_s=expires_in_s,  # type: ignore[arg-type]
                       tenant=secure.tenants[tenant] if tenant else None)
    out = Session(nc=None, minted=minted)  # type: ignore[arg-type]
    out.nc = await connect_as(secure, minted, out.errors, out.changed)
    try:
        yield out
    finally:
        await out.nc.close()


def tenant_client(s: Session, tenant: str) -> Client:
    """Our client library on a tenant's session, as ``Client.connect`` would set it up."""
    return Client(s.nc, tenant=tenant, api_prefix=FLEET_API_PREFIX)
