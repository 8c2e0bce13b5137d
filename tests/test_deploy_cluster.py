"""deploy/nats/cluster/ as an operator runs it: three nats-servers started from those files
alone (operator mode, TLS on the client and route ports), prepared by ``vidfleet setup``, form
one JetStream cluster in which every stream has 3 replicas; a route without our CA's
certificate is not let in."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from broker.connect import connect
from broker.creds import LiveCredentials
from broker.server import find_nats_server
from tests.prometheus import free_port
from tests.test_cli import VIDFLEET
from tests.test_tls import make_ca, make_server_cert

CLUSTER = Path(__file__).resolve().parent.parent / "deploy" / "nats" / "cluster"


def _render(text: str, *, node: int, root: Path, tls: Path, clients: list[int],
            routes: list[int], monitor: int) -> str:
    """A node's file with the VM's paths and host names swapped for this machine's."""
    text = text.replace("/etc/vidfleet/tls", str(tls)).replace(
        "/srv/vidfleet/nats", str(root / "nats")).replace(
        "port: 4222", f"port: {clients[node - 1]}").replace(
        "0.0.0.0:6222", f"127.0.0.1:{routes[node - 1]}").replace(
        "http: 127.0.0.1:8222", f"http: 127.0.0.1:{monitor}")
    for peer in (1, 2, 3):
        text = text.replace(f"nats-{peer}.vidfleet.internal:6222", f"127.0.0.1:{routes[peer - 1]}")
    settings = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "vidfleet.internal" not in settings and "/srv/vidfleet" not in settings
    return text


@contextmanager
def _nodes(tmp: Path, auth_conf: Path, jwt_dir: Path) -> Iterator[tuple[list[int], Path]]:
    tls = tmp / "tls"
    tls.mkdir()
    ca_key, ca = make_ca(tls, "ours")
    key, cert = make_server_cert(tls, ca_key, ca)  # server.key, server.pem: for clients
    shutil.copy(key, tls / "route.key")  # the same certificate serves the routes here
    shutil.copy(cert, tls / "route.pem")
    shutil.copy(ca, tls / "route-ca.pem")
    clients, routes = [free_port() for _ in range(3)], [free_port() for _ in range(3)]
    procs = []
    try:
        for node in (1, 2, 3):
            root = tmp / f"n{node}"  # plays the node's /srv/vidfleet
            (root / "auth" / "jwt").mkdir(parents=True)
            # Each VM has its own copy of the account settings, resolving into its own dir.
            (root / "auth" / "server.conf").write_text(
                auth_conf.read_text().replace(str(jwt_dir), str(root / "auth" / "jwt")))
            for name in ("common.conf", f"n{node}.conf"):
                (root / name).write_text(_render(
                    (CLUSTER / name).read_text(), node=node, root=root, tls=tls,
                    clients=clients, routes=routes, monitor=free_port()))
            log = open(root / "nats.log", "wb")  # noqa: SIM115
            procs.append((subprocess.Popen([find_nats_server(), "-c", str(root / f"n{node}.conf")],
                                           stdout=log, stderr=log), log))
        yield clients, ca
    finally:
        for proc, log in procs:
            proc.terminate()
            proc.wait(10)
            log.close()


def _route_answers(port: int, ca: Path, cert: Path | None = None) -> bool:
    """A TLS connection to the route port with the cluster's CA, and ``cert`` as our own
    (none: no client certificate): does the node send its route INFO?"""
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(cert.with_name("route.pem"), cert.with_name("route.key"))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.makefile("rb").readline().startswith(b"INFO ")
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return False


def _listen(root: Path) -> int:
    """The route port a rendered node listens on."""
    conf = next(root.glob("n?.conf")).read_text()
    return int(conf.split("listen: 127.0.0.1:")[1].split()[0])


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_the_deploy_cluster_files_form_a_tls_cluster_with_3_replicas(tmp_path: Path) -> None:
    ctl = tmp_path / "controller"  # the controller's data dir: keys and admin.creds
    env = {**os.environ, "VIDFLEET_DATA_DIR": str(ctl)}
    made = subprocess.run([*VIDFLEET, "setup", "--keys-only"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert made.returncode == 0, made.stderr
    with _nodes(tmp_path, ctl / "auth" / "server.conf", ctl / "auth" / "jwt") as (ports, ca):
        url = ",".join(f"tls://127.0.0.1:{p}" for p in ports)
        env |= {"VIDFLEET_TLS_CA_FILE": str(ca)}
        setup = await asyncio.create_subprocess_exec(
            *VIDFLEET, "--nats-url", url, "setup", env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(setup.communicate(), 90)
        assert setup.returncode == 0, err.decode()[-3000:]
        assert "(3 replica(s) each)" in out.decode()
        nc = await connect(url, name="t", tls_ca_file=str(ca),
                           credentials=LiveCredentials.from_creds(
                               (ctl / "auth" / "admin.creds").read_text()))
        try:
            streams = await nc.jetstream().streams_info()
        finally:
            await nc.close()
        assert {"JOBS", "EVENTS", "OBJ_inputs-default"} <= {s.config.name for s in streams}
        assert {s.config.name: s.config.num_replicas for s in streams
                if s.config.num_replicas != 3} == {}
        assert all(s.cluster is not None and s.cluster.leader for s in streams)
        # The route port takes TLS with a certificate of the cluster's CA, and nothing else.
        route = _listen(tmp_path / "n2")
        assert _route_answers(route, ca, cert=tmp_path / "tls" / "route.pem")
        assert not _route_answers(route, ca)
