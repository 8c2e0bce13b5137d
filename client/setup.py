"""A deployment's keys, and its streams on servers that run already: ``vidfleet setup``.

``vidfleet up`` does the same for the servers it starts itself (client/stack.py calls
``prepare``). An always-on deployment (docs/deploy.md) runs nats-server (or three, a cluster)
as services: ``vidfleet setup --keys-only`` writes the keys and the ``auth/server.conf`` the
servers include, then, with the servers up, ``vidfleet setup`` creates every stream, bucket and
consumer (3 replicas when the server it reaches is in a cluster), pushes the accounts and makes
the default tenant. Both are safe to repeat, after an upgrade too: nothing existing is lost,
and the keys are never replaced (that would orphan every creds file).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from msgspec import structs
from nats.aio.client import Client

from broker.auth import mint_user
from broker.auth_store import ADMIN_NAME, AuthDir, create_tenant, revoke_listed
from broker.cluster import replicas_for, wait_for_jetstream
from broker.connect import connect
from broker.creds import LiveCredentials
from broker.subjects import DEFAULT_TENANT
from broker.topology import TopologyConfig, ensure_topology
from client.commands import ClientConfig, run_command

__all__ = ["prepare", "replicas_of", "setup"]


def replicas_of(nc: Client) -> int:
    """Replicas for the servers ``nc`` is connected to: 3 in a cluster of three or more (the
    server's INFO names its cluster and every member's client URL), else 1."""
    info = nc._server_info  # nats-py keeps the INFO the server sent, and no accessor for it
    if not info.get("cluster"):
        return 1
    return replicas_for(len(info.get("connect_urls") or ()))


async def prepare(nc: Client, *, url: str, auth: AuthDir | None, topology: TopologyConfig,
                  timeout_s: float = 30.0, tls_ca_file: str = "") -> None:
    """Streams, buckets and consumers as ``topology`` says (``nc`` is FLEET's), and with
    ``auth`` the default tenant's account pushed, with AGENTS reaching it; an admin creds
    file from before they expired is revoked."""
    await wait_for_jetstream(nc.jetstream(), timeout_s)
    await ensure_topology(nc.jetstream(), topology)
    if auth is None:
        return
    keys = auth.keys()
    user = mint_user(keys, "system", "vidfleet-setup-sys", expires_in_s=300)
    system = await connect(url, name="vidfleet-setup-sys", max_reconnect_attempts=3,
                           credentials=LiveCredentials(user.jwt.reveal(), user.seed),
                           tls_ca_file=tls_ca_file)
    try:
        await create_tenant(nc.jetstream(), system, keys, DEFAULT_TENANT)
        current = LiveCredentials.from_creds(auth.admin_creds.read_text())
        never = [e for e in auth.clients().get(ADMIN_NAME, []) if e.get("expires_at") is None]
        await revoke_listed(nc.jetstream(), system, keys, never,
                            keep=str(current.claims.get("sub")))
    finally:
        await system.close()


@click.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Where the keys are kept [env VIDFLEET_DATA_DIR; default ./vidfleet-data]")
@click.option("--keys-only", is_flag=True,
              help="Only make the keys and auth/server.conf (before the servers start).")
@click.option("--replicas", type=click.IntRange(1, 5), default=None,
              help="Replicas per stream [default: 3 if the server is in a cluster, else 1].")
@click.pass_obj
def setup(cfg: ClientConfig, data_dir: Path | None, keys_only: bool,
          replicas: int | None) -> None:
    """Make the deployment's keys in DATA_DIR/auth, then its streams on running servers."""
    auth = AuthDir((data_dir or Path(cfg.data_dir)).resolve() / "auth")
    auth.ensure()
    click.echo(f"keys in {auth.path} (nats-server includes {auth.server_conf}; "
               f"the operator's tools use {auth.admin_creds})")
    if not keys_only:
        sys.exit(run_command(_streams(cfg, auth, replicas)))


async def _streams(cfg: ClientConfig, auth: AuthDir, replicas: int | None) -> int:
    nc = await connect(cfg.nats_url, name="vidfleet-setup", max_reconnect_attempts=3,
                       credentials=LiveCredentials.from_creds(auth.admin_creds.read_text()),
                       tls_ca_file=cfg.tls_ca_file)
    try:
        topology = structs.replace(TopologyConfig(), replicas=replicas or replicas_of(nc))
        await prepare(nc, url=cfg.nats_url, auth=auth, topology=topology,
                      tls_ca_file=cfg.tls_ca_file)
    finally:
        await nc.close()
    click.echo(f"streams, buckets and the default tenant ready on {cfg.nats_url} "
               f"({topology.replicas} replica(s) each)")
    return 0
