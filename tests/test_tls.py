"""TLS: agents and clients verify the server's certificate (a private CA here, made with the
openssl CLI); a connection that cannot verify it is refused, never downgraded."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import nats.errors
import pytest

from broker.connect import connect
from broker.server import EmbeddedServer
from broker.topology import ensure_topology
from client.api import Client
from gpu_agent.config import AgentConfig
from tests.conftest import TEST_TOPOLOGY, running_agent


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


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    ca_key, ca_cert = make_ca(tmp_path, "ours")
    _, other_ca = make_ca(tmp_path, "other")
    key, cert = make_server_cert(tmp_path, ca_key, ca_cert)
    server = EmbeddedServer(tmp_path / "nats", extra_args=[
        "--tls", "--tlscert", str(cert), "--tlskey", str(key)]).start()
    yield server.url.replace("nats://", "tls://"), ca_cert, other_ca
    server.stop()


async def test_clients_and_agents_verify_the_server_certificate(
        tls_server: tuple[str, Path, Path], tmp_path: Path) -> None:
    url, ca, other_ca = tls_server
    nc = await connect(url, name="t", tls_ca_file=str(ca), max_reconnect_attempts=1)
    await ensure_topology(nc.jetstream(), TEST_TOPOLOGY)
    await nc.close()
    client = await Client.connect(url, tls_ca_file=str(ca))
    await client.close()
    config = AgentConfig(nats_url=url, tls_ca_file=str(ca), work_dir=str(tmp_path / "agent"),
                         fetch_timeout_s=2.0, heartbeat_interval_s=1.0)
    async with running_agent(config) as agent:
        assert agent.ready.is_set()  # connected over TLS and bound to the jobs consumer
    for ca_file in (str(other_ca), ""):  # a CA that did not sign it; the system's CAs
        with pytest.raises((ssl.SSLError, nats.errors.Error, OSError)):
            await connect(url, name="t", tls_ca_file=ca_file, max_reconnect_attempts=0,
                          allow_reconnect=False)
