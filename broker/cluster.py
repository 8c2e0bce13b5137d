"""A JetStream cluster of nats-servers on one machine, for development and the fault suite
(``vidfleet up --cluster 3``); a real deployment's nodes are in deploy/nats/cluster/.

Each node has its own name (JetStream places replicas by it), data and route port; routes
are listed in full on every node (a node ignores the route to itself). With operator-mode auth
each node gets its own copy of the account settings with a resolver directory of its own: the
``full`` resolver keeps one per server and the servers pass account updates (a new tenant, a
revocation) to each other over the system account.

Clients take the nodes' URLs comma-separated and fail over by themselves (broker/connect.py).
Streams are replicated when ``TopologyConfig.replicas`` says so (``replicas_for``): a stream
with one replica dies with its node.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from broker.auth import AuthKeys, server_config
from broker.server import EmbeddedServer, ServerError
from broker.subjects import JOBS_STREAM

__all__ = ["CLUSTER_NAME", "cluster_nodes", "replicas_for", "replicas_in_use",
           "wait_for_jetstream"]

CLUSTER_NAME = "vidfleet"


def replicas_for(nodes: int) -> int:
    """Replicas per stream: 3 on three nodes or more (a node may be lost without losing a
    write or the quorum), 1 on a single server."""
    return 3 if nodes >= 3 else 1


async def replicas_in_use(js: JetStreamContext, default: int) -> int:
    """The deployment's replicas, as JOBS has them (so a tenant made later by ``vidfleet
    creds`` gets as many as the streams ``vidfleet up --cluster 3`` made); ``default``
    before JOBS exists."""
    try:
        return (await js.stream_info(JOBS_STREAM)).config.num_replicas or default
    except NotFoundError:
        return default


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def cluster_nodes(data_dir: Path, *, size: int, host: str = "127.0.0.1", port: int = 0,
                  keys: AuthKeys | None = None) -> list[EmbeddedServer]:
    """``size`` servers (not started) forming one cluster. Client ports ``port``, ``port+1``…
    (0: each picks a free one); route ports are picked now, since every node must name all
    of them. With ``keys``, operator-mode auth as ``AuthDir.ensure`` writes it, per node."""
    if size < 1:
        raise ServerError(f"a cluster needs at least one node, not {size}")
    routes = [f"nats-route://{host}:{_free_port(host)}" for _ in range(size)]
    nodes = []
    for n in range(size):
        name = f"n{n + 1}"
        node_dir = data_dir / name
        node_dir.mkdir(parents=True, exist_ok=True)
        args = ["--server_name", name, "--cluster_name", CLUSTER_NAME,
                "--cluster", routes[n].replace("nats-route://", "nats://"),
                "--routes", ",".join(routes)]
        if keys is not None:
            (node_dir / "jwt").mkdir(exist_ok=True)
            conf = node_dir / "server.conf"
            conf.write_text(server_config(keys, str(node_dir / "jwt")))
            conf.chmod(0o600)
            args = ["-c", str(conf), *args]
        nodes.append(EmbeddedServer(node_dir / "data", host=host, port=port + n if port else 0,
                                    extra_args=args))
    return nodes


async def wait_for_jetstream(js: JetStreamContext, timeout_s: float = 30.0) -> None:
    """Until JetStream answers for this account: a fresh cluster elects its meta leader a
    few seconds after its nodes are up, and a stream created before that fails. The server
    offers nothing to wait on, so this asks every quarter second."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await js.account_info()
            return
        except (ServiceUnavailableError, APIError, TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise ServerError(f"JetStream not available after {timeout_s} s: "
                                  f"{exc}") from exc
            await asyncio.sleep(0.25)
