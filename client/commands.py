"""What every CLI command shares: its configuration and how it runs and reports errors."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import click
import nats.errors
from msgspec import Struct

from broker.config import ConfigError, load_config
from client.api import CancelError, Client, JobNotFound, QueryError, SubmitError
from client.dead_letters import DeadLetterError

__all__ = ["ClientConfig", "client_config", "open_client", "run_command"]


class ClientConfig(Struct, frozen=True, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    data_dir: str = "vidfleet-data"
    # A .creds file; empty: <data_dir>/auth/admin.creds when `vidfleet up` made one there.
    creds_file: str = ""
    # The tenant the fleet's own (admin) credentials act for; a tenant's creds name their own.
    tenant: str = ""
    tls_ca_file: str = ""  # a private CA for a tls:// server (default: the system's CAs)
    log_level: str = "WARNING"

    def creds(self) -> str | None:
        if self.creds_file:
            return self.creds_file
        local = Path(self.data_dir) / "auth" / "admin.creds"
        return str(local) if local.exists() else None


async def open_client(cfg: ClientConfig) -> Client:
    """A client connection with the configured credentials and TLS trust."""
    return await Client.connect(cfg.nats_url, creds_file=cfg.creds(),
                                tenant=cfg.tenant or None, tls_ca_file=cfg.tls_ca_file)


def client_config(**overrides: object) -> ClientConfig:
    try:
        return load_config(ClientConfig, overrides=overrides)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def run_command(coro: Coroutine[Any, Any, int]) -> int:
    try:
        return asyncio.run(coro)
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM where handled
        click.echo("interrupted", err=True)
        return 130
    except nats.errors.NoServersError:
        click.echo("error: cannot reach NATS, or it refused our credentials (is `vidfleet up` "
                   "running? see --nats-url; --creds, or VIDFLEET_DATA_DIR for the data dir "
                   "`vidfleet up` used, which holds auth/admin.creds)", err=True)
        return 1
    except (SubmitError, CancelError, QueryError, DeadLetterError, JobNotFound, TimeoutError,
            OSError, nats.errors.Error) as exc:
        click.echo(f"error: {exc or type(exc).__name__}", err=True)
        return 1
    except ValueError as exc:  # an invalid job id
        raise click.BadParameter(str(exc)) from None


