"""``vidfleet creds client NAME`` and ``vidfleet creds revoke NAME``: credentials for clients.

Run where the deployment's keys are (``<data dir>/auth``, made by ``vidfleet up``). A client
creds file can submit jobs, follow events, upload inputs and download results, and nothing
about the fleet; it names a private inbox (``_INBOX_C.<NAME>``) that our client library uses.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import click

from broker.auth import mint_user
from broker.auth_store import AuthDir, revoke, write_private
from broker.connect import connect
from broker.creds import LiveCredentials, creds_text
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
@click.option("--expires", "expires", default="30d", show_default=True,
              help="Lifetime: 30d, 12h, 90m...")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Where to write it [default: ./NAME.creds].")
@click.pass_obj
def client(cfg: ClientConfig, name: str, expires: str, out: Path | None) -> None:
    """Write NAME.creds: submit jobs, follow events, read results; nothing about the fleet."""
    if not _NAME_RE.match(name):
        raise click.BadParameter("use 1-64 characters from A-Z a-z 0-9 _ -", param_hint="NAME")
    auth = _auth_dir(cfg)
    minted = mint_user(auth.keys(), "client", name, expires_in_s=parse_lifetime(expires))
    path = out or Path(f"{name}.creds")
    write_private(path, creds_text(minted).encode())
    auth.register_client(name, minted.public_key, minted.expires_at)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(minted.expires_at or 0))
    click.echo(f"wrote {path} for client {name!r}, valid until {when}")


@creds.command("revoke")
@click.argument("name")
@click.pass_obj
def revoke_client(cfg: ClientConfig, name: str) -> None:
    """Refuse every creds file made for NAME from now on; its connections are closed."""
    sys.exit(run_command(_revoke(cfg, name)))


async def _revoke(cfg: ClientConfig, name: str) -> int:
    auth = _auth_dir(cfg)
    issued = auth.clients().get(name)
    if not issued:
        click.echo(f"error: no creds were made for {name!r} here", err=True)
        return 1
    keys = auth.keys()
    system_user = mint_user(keys, "system", "vidfleet-cli-sys", expires_in_s=300)
    admin = LiveCredentials.from_creds(auth.admin_creds.read_text())
    system = await connect(cfg.nats_url, name="vidfleet-cli-sys", max_reconnect_attempts=3,
                           credentials=LiveCredentials(system_user.jwt.reveal(),
                                                       system_user.seed))
    nc = await connect(cfg.nats_url, name="vidfleet-cli", max_reconnect_attempts=3,
                       credentials=admin)
    try:
        now = time.time()
        for entry in issued:
            until = float(entry.get("expires_at") or now + 365 * 86400)  # type: ignore[arg-type]
            if until > now:
                await revoke(nc.jetstream(), system, keys, str(entry["key"]), until=until)
    finally:
        await nc.close()
        await system.close()
    click.echo(f"revoked every creds file made for {name!r}")
    return 0
