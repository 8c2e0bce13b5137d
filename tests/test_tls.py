"""TLS: agents and clients verify the server's certificate (a private CA here, made with the
openssl CLI); a connection that cannot verify it is refused, never downgraded. ``tls://``
means TLS or nothing sent: a server that answers in plaintext (an impostor, or a server
without TLS) gets no CONNECT, no JWT, no signature. Rented machines only get tls:// URLs."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import nats.errors
import pytest

from broker.auth import generate_keys, mint_user
from broker.config import ConfigError, Secret, load_config
from broker.connect import connect
from broker.creds import LiveCredentials
from broker.server import EmbeddedServer
from broker.tls import TlsNotOffered, is_tls_only, tls_required
from broker.topology import ensure_topology
from client.api import Client
from controller.config import ControllerConfig
from controller.providers.base import ProviderError
from controller.providers.vast import VastConfig, VastProvider, provider_from_config
from tests.conftest import TEST_TOPOLOGY, agent_config, running_agent
from tests.fakes.vast import FakeVast
from tests.secure_stack import Secure, start_secure_server


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}-ca.key", directory / f"{name}-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", f"/CN={name} test CA"],
                   check=True, capture_output=True)
    return key, cert


def make_server_cert(directory: Path, ca_key: Path, ca_cert: Path) -> tuple[Path, Path]:
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    subprocess.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey",
                    str(ca_key), "-CAcreateserial", "-out", str(cert), "-days", "2",
                    "-extfile", str(ext)], check=True, capture_output=True)
    return key, cert


class TlsServer(NamedTuple):
    url: str  # tls://
    ca: Path  # signed its certificate
    other_ca: Path  # did not
    secure: Secure  # operator mode, as every test server

    @property
    def server(self) -> EmbeddedServer:
        return self.secure.server


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TlsServer]:
    ca_key, ca_cert = make_ca(tmp_path, "ours")
    _, other_ca = make_ca(tmp_path, "other")
    key, cert = make_server_cert(tmp_path, ca_key, ca_cert)
    made = start_secure_server(tmp_path, ("--tls", "--tlscert", str(cert), "--tlskey", str(key)))
    yield TlsServer(made.url.replace("nats://", "tls://"), ca_cert, other_ca, made)
    made.server.stop()


async def test_clients_and_agents_verify_the_server_certificate(
        tls_server: TlsServer, tmp_path: Path) -> None:
    url, ca, other_ca, secure = tls_server
    nc = await connect(url, name="t", tls_ca_file=str(ca), max_reconnect_attempts=1,
                       credentials=secure.credentials("controller", "t"))
    await ensure_topology(nc.jetstream(), TEST_TOPOLOGY, tenants=())
    await nc.close()
    client = await Client.connect(url, tls_ca_file=str(ca),
                                  creds_file=secure.auth.admin_creds)
    await client.close()
    config = agent_config(secure, tmp_path / "agent", nats_url=url, tls_ca_file=str(ca))
    async with running_agent(config) as agent:
        assert agent.ready.is_set()  # connected over TLS, asking the dispatcher for work
    for ca_file in (str(other_ca), ""):  # a CA that did not sign it; the system's CAs
        with pytest.raises((ssl.SSLError, nats.errors.Error, OSError)):
            await connect(url, name="t", tls_ca_file=ca_file, max_reconnect_attempts=0,
                          allow_reconnect=False)


class Impostor:
    """Speaks NATS in plaintext on 127.0.0.1: an INFO that does not ask for TLS (what a
    TLS-stripping man in the middle forwards), then records every byte a client sends."""

    def __init__(self, **info: Any) -> None:
        self.info = {"server_id": "IMPOSTOR", "version": "2.15.1", "proto": 1, "headers": True,
                     "max_payload": 1048576, "auth_required": True, "nonce": "n0nce", **info}
        self.received = b""
        self.hold_info = False  # True: new connections never get their INFO
        self.connections = 0  # ever accepted
        self._open = 0
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def hung_up(self, connections: int = 1) -> None:
        """Until at least ``connections`` were made and the client has closed every one."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.connections >= connections and not self._open)

    async def connected(self, connections: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.connections >= connections)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._changed:
            self.connections += 1
            self._open += 1
            self._changed.notify_all()
        if not self.hold_info:
            writer.write(b"INFO " + json.dumps(self.info).encode() + b"\r\n")
            await writer.drain()
        while chunk := await reader.read(65536):
            self.received += chunk
        writer.close()
        async with self._changed:
            self._open -= 1
            self._changed.notify_all()


@pytest.fixture
async def impostor() -> AsyncIterator[Impostor]:
    made = Impostor()
    yield made
    await made.stop()


def agent_credentials() -> LiveCredentials:
    minted = mint_user(generate_keys(), "agent", "vf-victim", expires_in_s=600)
    return LiveCredentials(minted.jwt.reveal(), minted.seed)


@pytest.mark.parametrize("info", [{}, {"tls_available": True}],
                         ids=["no-tls", "tls-optional"])
async def test_tls_url_sends_nothing_to_a_plaintext_server(
        impostor: Impostor, info: dict[str, Any]) -> None:
    impostor.info |= info
    port = await impostor.start()
    with pytest.raises(TlsNotOffered, match=r"TLS required .* 127\.0\.0\.1:") as refused:
        await connect(f"tls://127.0.0.1:{port}", name="victim", max_reconnect_attempts=1,
                      credentials=agent_credentials())
    await asyncio.wait_for(impostor.hung_up(2), 10)
    assert impostor.connections == 2  # every attempt was refused, not just the first
    assert impostor.received == b""  # no CONNECT, no JWT, no signature of its nonce
    assert "nothing was sent" in str(refused.value)


async def test_tls_url_sends_nothing_to_a_plaintext_server_after_a_reconnect(
        tls_server: TlsServer, impostor: Impostor) -> None:
    """The impostor takes the port of a TLS server that went away: the reconnect is refused;
    and what was published meanwhile never reaches it, not even when the client is closed
    while it waits for an INFO (nats-py flushes buffered publishes into the socket it has)."""
    down = asyncio.Event()

    async def on_disconnect() -> None:
        down.set()

    nc = await connect(tls_server.url, name="victim", tls_ca_file=str(tls_server.ca),
                       disconnected_cb=on_disconnect,
                       credentials=tls_server.secure.credentials("controller", "victim"))
    tls_server.server.stop()
    await asyncio.wait_for(down.wait(), 10)
    await nc.publish("jobs.default.caption.j1", b"buffered while disconnected")
    assert tls_server.server.port is not None
    await impostor.start(tls_server.server.port)
    await asyncio.wait_for(impostor.hung_up(1), 10)  # a reconnect, refused
    impostor.hold_info = True
    await asyncio.wait_for(impostor.connected(2), 10)  # the next one, not yet refused
    assert not nc.is_connected
    await nc.close()
    await asyncio.wait_for(impostor.hung_up(2), 10)
    assert impostor.received == b""


async def test_tls_url_to_a_plaintext_nats_server_fails(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path / "plain") as server, \
            pytest.raises(TlsNotOffered, match="TLS required"):
        await connect(server.url.replace("nats://", "tls://"), name="t",
                      max_reconnect_attempts=0, allow_reconnect=False)


async def test_a_url_mixing_tls_and_plaintext_servers_is_refused_before_dialling() -> None:
    with pytest.raises(ConfigError, match="mixes nats://, tls://"):
        await connect("tls://127.0.0.1:1,nats://127.0.0.1:2", name="t")
    assert tls_required("tls://a:4222, tls://b:4222") and not tls_required("nats://a,b:4222")
    assert is_tls_only("TLS://a:4222") and not is_tls_only("") and not is_tls_only("a:4222")


@pytest.mark.parametrize(("settings", "refused"), [
    ({"VIDFLEET_NATS_URL": "nats://bus.example:4222"}, True),
    ({"VIDFLEET_AGENT_NATS_URL": "nats://bus.example:4222"}, True),
    ({"VIDFLEET_AGENT_NATS_URL": "tls://a.example:4222,nats://b.example:4222"}, True),
    ({"VIDFLEET_AGENT_NATS_URL": "tls://bus.example:4222"}, False),
    ({"VIDFLEET_NATS_URL": "tls://bus.example:4222"}, False),
    ({"VIDFLEET_AGENT_NATS_URL": "nats://10.0.0.2:4222",
      "VIDFLEET_ALLOW_PLAINTEXT_AGENT_URL": "1"}, False),
])
async def test_the_vast_provider_needs_a_tls_url_for_rented_machines(
        settings: dict[str, str], refused: bool) -> None:
    config = load_config(ControllerConfig, env={
        "VIDFLEET_PROVIDER": "vast", "VIDFLEET_VAST_API_KEY": "k",
        "VIDFLEET_VAST_IMAGE": f"registry.example/vidfleet-agent@sha256:{'0' * 64}", **settings})
    if refused:
        with pytest.raises(ConfigError, match=r"VIDFLEET_AGENT_NATS_URL.*tls://"):
            provider_from_config(config)
    else:
        await provider_from_config(config).aclose()


def test_the_controller_refuses_to_start_renting_with_a_plaintext_agent_url() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDFLEET_")}
    env |= {"VIDFLEET_PROVIDER": "vast", "VIDFLEET_VAST_API_KEY": "k",
            "VIDFLEET_NATS_URL": "nats://127.0.0.1:9", "VIDFLEET_AGENT_NATS_URL": ""}
    done = subprocess.run([sys.executable, "-m", "controller"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert "bad configuration in VIDFLEET_AGENT_NATS_URL" in done.stderr


async def test_the_vast_provider_never_gives_a_machine_a_plaintext_url() -> None:
    with FakeVast() as fake:
        provider = VastProvider(VastConfig(api_key=Secret(fake.api_key), image="vidfleet/agent:t",
                                           base_url=fake.url, min_interval_s={}))
        try:
            offer = (await provider.search_offers())[0]
            for env in ({"VIDFLEET_NATS_URL": "nats://bus.example:4222"}, {},
                        {"VIDFLEET_NATS_URL": "tls://a.example:4222,nats://b.example:4222"}):
                with pytest.raises(ProviderError, match="tls://") as caught:
                    await provider.launch(offer, label="vf-plain", env=env)
                assert not caught.value.retryable
            assert fake.create_requests == []
            await provider.launch(offer, label="vf-tls",
                                  env={"VIDFLEET_NATS_URL": "tls://bus.example:4222"})
            assert [b["env"]["VIDFLEET_NATS_URL"] for b in fake.create_requests] == [
                "tls://bus.example:4222"]
        finally:
            await provider.aclose()
