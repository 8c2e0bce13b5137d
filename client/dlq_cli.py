"""``vidfleet dlq``: a tenant's jobs that failed for good (client/dead_letters.py)."""

from __future__ import annotations

import sys
import time

import click

from broker.dead_letters import DeadLetter, encode
from client.commands import ClientConfig, open_client, run_command
from client.display import duration

__all__ = ["dlq"]


@click.group()
def dlq() -> None:
    """Jobs that failed for good, kept with their reason, FFmpeg's last lines and their
    inputs: look at them, run them again once the cause is fixed, or drop them."""


@dlq.command("list")
@click.option("--limit", type=click.IntRange(1, 500), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One letter per line, as JSON.")
@click.pass_obj
def list_(cfg: ClientConfig, limit: int, as_json: bool) -> None:
    """The tenant's dead letters, newest first."""
    sys.exit(run_command(_list(cfg, limit, as_json)))


async def _list(cfg: ClientConfig, limit: int, as_json: bool) -> int:
    async with await open_client(cfg) as vf:
        letters, truncated = await vf.dead_letters.letters(limit=limit)
    now = time.time()
    for letter in letters:
        click.echo(encode(letter).decode() if as_json else _line(letter, now))
    if not letters and not as_json:
        click.echo("no dead letters", err=True)
    if truncated:
        click.echo("(more dead letters than shown: see --limit)", err=True)
    return 0


def _line(letter: DeadLetter, now: float) -> str:
    return (f"{letter.job_id}  {letter.operation}  failed {duration(now - letter.failed_at)} "
            f"ago after {letter.attempts} attempt(s)  [{letter.error.code}] "
            f"{letter.error.message.splitlines()[0] if letter.error.message else ''}  "
            f"(inputs {letter.inputs_state}; kept {duration(letter.expires_at - now)} more)")


@dlq.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="The whole letter as JSON.")
@click.pass_obj
def show(cfg: ClientConfig, job_id: str, as_json: bool) -> None:
    """One dead letter: the reason, FFmpeg's last lines, the job as it was sent."""
    sys.exit(run_command(_show(cfg, job_id, as_json)))


async def _show(cfg: ClientConfig, job_id: str, as_json: bool) -> int:
    async with await open_client(cfg) as vf:
        letter = await vf.dead_letters.get(job_id)
    if as_json:
        click.echo(encode(letter).decode())
        return 0
    now = time.time()
    click.echo(_line(letter, now))
    click.echo(f"  error      [{letter.error.code}] {letter.error.message}")
    if letter.inputs_note:
        click.echo(f"  inputs     {letter.inputs_note}")
    click.echo(f"  cost       ${letter.cost_usd:.4f}")
    click.echo(f"  job        {letter.body}")
    if letter.error.stderr_tail:
        click.echo("  ffmpeg said:")
        for line in letter.error.stderr_tail.splitlines():
            click.echo(f"    {line}")
    return 0


@dlq.command()
@click.argument("job_id")
@click.pass_obj
def retry(cfg: ClientConfig, job_id: str) -> None:
    """Run a dead letter's job again, same id, as a new attempt (its inputs put back from
    the kept copies). Follow it with `vidfleet watch JOB`."""
    sys.exit(run_command(_retry(cfg, job_id)))


async def _retry(cfg: ClientConfig, job_id: str) -> int:
    async with await open_client(cfg) as vf:
        attempt = await vf.dead_letters.retry(job_id)
    click.echo(f"job {job_id} queued again: attempt {attempt} comes next")
    return 0


@dlq.command()
@click.argument("job_id")
@click.pass_obj
def drop(cfg: ClientConfig, job_id: str) -> None:
    """Delete a dead letter and its kept inputs (the job stays failed)."""
    sys.exit(run_command(_drop(cfg, job_id)))


async def _drop(cfg: ClientConfig, job_id: str) -> int:
    async with await open_client(cfg) as vf:
        await vf.dead_letters.drop(job_id)
    click.echo(f"dead letter {job_id} dropped")
    return 0
