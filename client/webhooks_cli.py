"""``vidfleet webhooks``: a tenant's default webhook and signing secret (operator only)."""

from __future__ import annotations

import sys

import click

from client.commands import ClientConfig, open_client, run_command

__all__ = ["webhooks"]


@click.group()
def webhooks() -> None:
    """A tenant's webhooks: where its jobs' outcomes are POSTed, and the secret they are
    signed with (Standard Webhooks). Needs the operator's credentials."""


@webhooks.command("set")
@click.argument("tenant")
@click.option("--url", default=None,
              help="The default webhook of the tenant's jobs ('' for none; jobs may name "
              "their own with --webhook).")
@click.option("--rotate", is_flag=True, default=False,
              help="A new signing secret; the old one stops being used at once.")
@click.pass_obj
def set_(cfg: ClientConfig, tenant: str, url: str | None, rotate: bool) -> None:
    """Set TENANT's webhook; makes its signing secret on first use and prints it (give it to
    whoever receives the webhooks: they verify every delivery with it)."""
    sys.exit(run_command(_set(cfg, tenant, url, rotate)))


async def _set(cfg: ClientConfig, tenant: str, url: str | None, rotate: bool) -> int:
    async with await open_client(cfg) as vf:
        if vf.is_tenant:
            click.echo("error: `vidfleet webhooks` needs the operator's credentials", err=True)
            return 1
        settings, fresh = await vf.set_webhook_settings(tenant, url=url, rotate=rotate)
    click.echo(f"tenant {tenant}: default webhook {settings.url or '(none)'}")
    if fresh:
        click.echo(f"signing secret (new): {settings.secret}")
    return 0


@webhooks.command("show")
@click.argument("tenant")
@click.option("--secret", "show_secret", is_flag=True, default=False,
              help="Print the signing secret too.")
@click.pass_obj
def show(cfg: ClientConfig, tenant: str, show_secret: bool) -> None:
    """TENANT's default webhook, and whether it has a signing secret."""
    sys.exit(run_command(_show(cfg, tenant, show_secret)))


async def _show(cfg: ClientConfig, tenant: str, show_secret: bool) -> int:
    async with await open_client(cfg) as vf:
        if vf.is_tenant:
            click.echo("error: `vidfleet webhooks` needs the operator's credentials", err=True)
            return 1
        settings = await vf.webhook_settings(tenant)
    click.echo(f"tenant {tenant}: default webhook {settings.url or '(none)'}")
    secret = settings.secret if show_secret else ("set" if settings.secret else "none")
    click.echo(f"signing secret: {secret}")
    return 0
