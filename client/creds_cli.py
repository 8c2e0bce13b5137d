"""``vidfleet creds client NAME`` and ``vidfleet creds revoke NAME``: credentials for clients.

Run where the deployment's keys are (``<data dir>/auth``, made by ``vidfleet up``). A client
creds file belongs to a tenant (its own NATS account, made on first use): it can submit that
tenant's jobs, follow their events, upload inputs and download results, and nothing else, of
the fleet or of any other tenant.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import click
from nats.aio.client import Client

from broker.auth import mint_user
from broker.auth_store import ADMIN_NAME, AuthDir, create_tenant, revoke_listed, write_private
from broker.connect import connect
from broker.creds import LiveCredentials, creds_text
from broker.subjects import validate_tenant
from broker.topology import TopologyConfig, ensure_tenant
from client.commands import ClientConfig, run_command

__all__ = ["creds"]

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_lifetime(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``3600s`` -> seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if not m:
        raise click.BadParameter(f"{text!r}: use a number and a unit, e.g. 30d, 12h, 90m")
    return float(m.group(1)) * _UNITS_S[m.group(2)]


def _auth_dir(cfg: ClientConfig) -> AuthDir:
    auth = AuthDir(Path(cfg.data_dir) / "auth")
    if not auth.keys_file.exists():
        raise click.UsageError(f"no keys in {auth.path}: run `vidfleet up` there first, or set "
                               "VIDFLEET_DATA_DIR to the data dir that has them")
    return auth


@click.group()
def creds() -> None:
    """Credentials for clients (needs the deployment's keys: run where `vidfleet up` runs)."""


@creds.command("client")
@click.argument("name")
@click.option("--tenant", default=None,
              help="The tenant these creds act for [default: NAME]; made on first use.")
@click.option("--expires", "expires", default="30d", show_default=True,
              help="Lifetime: 30d, 12h, 90m...")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Where to write it [default: ./NAME.creds].")
@click.option("--inputs-max-gb", type=click.FloatRange(min=0.001), default=None,
              help="The tenant's quota of stored inputs [default: 4 for a new tenant, else "
              "unchanged]; the server reserves it on its disk.")
@click.option("--results-max-gb", type=click.FloatRange(min=0.001), default=None,
              help="The tenant's quota of stored results [default: 4 for a new tenant, else "
              "unchanged].")
@click.pass_obj
def client(cfg: ClientConfig, name: str, tenant: str | None, expires: str,
           out: Path | None, inputs_max_gb: float | None,
           results_max_gb: float | None) -> None:
    """Write NAME.creds: a tenant's jobs, events, inputs and results; nothing else."""
    if not _NAME_RE.match(name):
        raise click.BadParameter("use 1-64 characters from A-Z a-z 0-9 _ -", param_hint="NAME")
    if name == ADMIN_NAME:
        raise click.BadParameter("admin is the operator's own (vidfleet creds admin)",
                                 param_hint="NAME")
    tenant = tenant or name
    try:
        validate_tenant(tenant)
    except ValueError as exc:
        raise click.BadParameter(f"{exc} (or pass --tenant)", param_hint="tenant") from None
    default = TopologyConfig()
    quotas = TopologyConfig(
        tenant_inputs_max_bytes=int(inputs_max_gb * 2**30) if inputs_max_gb
        else default.tenant_inputs_max_bytes,
        tenant_results_max_bytes=int(results_max_gb * 2**30) if results_max_gb
        else default.tenant_results_max_bytes)
    resize = inputs_max_gb is not None or results_max_gb is not None
    sys.exit(run_command(_client(cfg, name, tenant, parse_lifetime(expires),
                                 out or Path(f"{name}.creds"), quotas, resize)))


async def _client(cfg: ClientConfig, name: str, tenant_name: str, lifetime_s: float,
                  path: Path, quotas: TopologyConfig, resize: bool) -> int:
    auth = _auth_dir(cfg)
    keys = auth.keys()
    async with _fleet_connections(cfg, auth) as (nc, system):
        js = nc.jetstream()
        tenant = await create_tenant(js, system, keys, tenant_name)
        await ensure_tenant(js, quotas, tenant.name, resize=resize)
    minted = mint_user(keys, "client", name, expires_in_s=lifetime_s, tenant=tenant)
    write_private(path, creds_text(minted).encode())
    auth.register_client(name, minted.public_key, minted.expires_at, minted.account)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(minted.expires_at or 0))
    click.echo(f"wrote {path} for client {name!r} of tenant {tenant.name!r}, valid until {when}")
    return 0


@contextlib.asynccontextmanager
async def _fleet_connections(cfg: ClientConfig,
                             auth: AuthDir) -> AsyncIterator[tuple[Client, Client]]:
    """An admin connection (FLEET) and a system one (to push account JWTs)."""
    system_user = mint_user(auth.keys(), "system", "vidfleet-cli-sys", expires_in_s=300)
    system = await connect(cfg.nats_url, name="vidfleet-cli-sys", max_reconnect_attempts=3,
                           credentials=LiveCredentials(system_user.jwt.reveal(),
                                                       system_user.seed),
                           tls_ca_file=cfg.tls_ca_file)
    try:
        nc = await connect(cfg.nats_url, name="vidfleet-cli", max_reconnect_attempts=3,
                           credentials=LiveCredentials.from_creds(auth.admin_creds.read_text()),
                           tls_ca_file=cfg.tls_ca_file)
        try:
            yield nc, system
        finally:
            await nc.close()
    finally:
        await system.close()


@creds.command("admin")
@click.option("--expires", "expires", default="30d", show_default=True,
              help="Lifetime of the new admin.creds: 30d, 12h, 90m...")
@click.pass_obj
def admin(cfg: ClientConfig, expires: str) -> None:
    """Rotate <data dir>/auth/admin.creds: write a new one, revoke every earlier one."""
    sys.exit(run_command(_rotate_admin(cfg, parse_lifetime(expires))))


async def _rotate_admin(cfg: ClientConfig, lifetime_s: float) -> int:
    auth = _auth_dir(cfg)
    keys = auth.keys()
    earlier = auth.clients().get(ADMIN_NAME, [])
    new = auth.write_admin(keys, lifetime_s)
    async with _fleet_connections(cfg, auth) as (nc, system):  # as the new admin
        await revoke_listed(nc.jetstream(), system, keys, earlier, keep=new.public_key)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(new.expires_at or 0))
    click.echo(f"wrote {auth.admin_creds}, valid until {when}; every earlier admin.creds is "
               "revoked")
    return 0


@creds.command("revoke")
@click.argument("name")
@click.pass_obj
def revoke_client(cfg: ClientConfig, name: str) -> None:
    """Refuse every creds file made for NAME from now on; its connections are closed."""
    sys.exit(run_command(_revoke(cfg, name)))


async def _revoke(cfg: ClientConfig, name: str) -> int:
    if name == ADMIN_NAME:
        click.echo("error: to replace admin.creds and revoke the earlier ones, run "
                   "`vidfleet creds admin`", err=True)
        return 2
    auth = _auth_dir(cfg)
    issued = auth.clients().get(name)
    if not issued:
        click.echo(f"error: no creds were made for {name!r} here", err=True)
        return 1
    keys = auth.keys()
    async with _fleet_connections(cfg, auth) as (nc, system):
        await revoke_listed(nc.jetstream(), system, keys, issued)
    click.echo(f"revoked every creds file made for {name!r}")
    return 0
