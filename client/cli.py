"""The ``vidfleet`` command line: run the embedded stack, submit and follow jobs, fetch results."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import click

from broker.events import Succeeded, encode_event
from broker.jobs import CaptionJob
from broker.logs import setup_logging
from broker.queries import JOB_STATES
from broker.queries import encode as encode_status
from broker.topology import TopologyConfig
from client.api import Client
from client.batch_cli import batch
from client.commands import ClientConfig, client_config, open_client, run_command
from client.creds_cli import creds
from client.display import describe, describe_status, exit_code, jobs_table
from client.dlq_cli import dlq
from client.fleet_cli import controller, simulate, status
from client.sample import make_sample
from client.setup import setup
from client.stack import Stack, StackOptions
from client.submit_cli import follow_and_fetch, submit
from client.webhooks_cli import webhooks

__all__ = ["main"]


@click.group()
@click.option("--nats-url", default=None, help="NATS server(s) [env VIDFLEET_NATS_URL; "
              "default nats://127.0.0.1:4222]")
@click.option("--creds", "creds_file", default=None,
              help="A .creds file [env VIDFLEET_CREDS_FILE; default: the one `vidfleet up` "
              "wrote in its data dir, if any].")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.pass_context
def cli(ctx: click.Context, nats_url: str | None, creds_file: str | None,
        verbose: int) -> None:
    """vidfleet: GPU video jobs over NATS JetStream."""
    cfg = client_config(nats_url=nats_url, creds_file=creds_file)
    level = {0: cfg.log_level, 1: "INFO"}.get(verbose, "DEBUG")
    setup_logging("cli", level=level)
    ctx.obj = cfg


@cli.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Where JetStream keeps its data [env VIDFLEET_DATA_DIR; "
              "default ./vidfleet-data]")
@click.option("--port", type=int, default=4222, show_default=True, help="0 picks a free port.")
@click.option("--max-agents", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Local agents the controller may start when jobs wait.")
@click.option("--ack-wait-s", type=float, default=30.0, show_default=True,
              help="How long a vanished agent holds its job before redelivery.")
@click.option("--dead-letter-days", type=click.FloatRange(0.01, 365), default=7.0,
              show_default=True, help="How long jobs that failed for good are kept, with "
              "their inputs, for `vidfleet dlq`.")
@click.option("--metrics-listen", default=None,
              help="Where the controller serves Prometheus figures [env "
              "VIDFLEET_METRICS_LISTEN; default 127.0.0.1:9464; empty: none]. A second "
              "`vidfleet up` on this machine needs another.")
@click.option("--cluster", type=click.IntRange(1, 9), default=1, show_default=True,
              help="nats-servers: 3 runs a JetStream cluster on this machine (client ports "
              "PORT, PORT+1, PORT+2) with every stream replicated 3 times.")
@click.pass_obj
def up(cfg: ClientConfig, data_dir: Path | None, port: int, max_agents: int,
       ack_wait_s: float, dead_letter_days: float, metrics_listen: str | None,
       cluster: int) -> None:
    """Run nats-server and the controller (local agents on demand) until Ctrl-C."""
    env = {} if metrics_listen is None else {"VIDFLEET_METRICS_LISTEN": metrics_listen}
    options = StackOptions(data_dir=(data_dir or Path(cfg.data_dir)).resolve(), port=port,
                           max_agents=max_agents, cluster=cluster, env=env,
                           topology=TopologyConfig(ack_wait_s=ack_wait_s,
                                                   dead_letter_max_age_s=dead_letter_days
                                                   * 86400))
    sys.exit(run_command(_up(options)))


async def _up(options: StackOptions) -> int:
    stop = asyncio.Event()
    stack = Stack(options)

    def on_signal() -> None:
        if not stop.is_set():
            stop.set()
            click.echo("stopping: agents finish their jobs (Ctrl-C again hands them back) ...",
                       err=True)
        else:
            stack.force()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    async with stack:
        metrics = options.env.get("VIDFLEET_METRICS_LISTEN",
                                   os.environ.get("VIDFLEET_METRICS_LISTEN", "127.0.0.1:9464"))
        click.echo(f"vidfleet is up: NATS at {stack.url}, controller with up to "
                   f"{options.max_agents} local agent(s) started on demand"
                   + (f", metrics on http://{metrics}/metrics" if metrics else "")
                   + f", data in {options.data_dir}. Ctrl-C stops.", err=True)
        await stop.wait()
    return 0


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line.")
@click.option("--timeout-s", type=float, default=None)
@click.pass_obj
def watch(cfg: ClientConfig, job_id: str, as_json: bool, timeout_s: float | None) -> None:
    """Replay a job's events from the start, then follow it live until it ends."""
    sys.exit(run_command(_watch(cfg, job_id, as_json, timeout_s)))


async def _watch(cfg: ClientConfig, job_id: str, as_json: bool, timeout_s: float | None) -> int:
    last = None
    async with await open_client(cfg) as vf:
        async for event in vf.watch(job_id, timeout_s=timeout_s):
            click.echo(encode_event(event).decode() if as_json else describe(event))
            last = event
    return exit_code(last)


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, default=False, help="The status as JSON.")
@click.pass_obj
def job(cfg: ClientConfig, job_id: str, as_json: bool) -> None:
    """Where a job is now: queued (its place), running (agent, attempt, progress, cost so
    far), waiting to run again, or how it ended."""
    sys.exit(run_command(_job(cfg, job_id, as_json)))


async def _job(cfg: ClientConfig, job_id: str, as_json: bool) -> int:
    async with await open_client(cfg) as vf:
        status = await vf.status(job_id)
    click.echo(encode_status(status).decode() if as_json else describe_status(status, time.time()))
    return 0


@cli.command()
@click.option("--state", type=click.Choice(JOB_STATES), default=None,
              help="Only the jobs in this state.")
@click.option("--since-h", type=click.FloatRange(0.0, 24.0, min_open=True), default=24.0,
              show_default=True, help="Jobs queued in the last this many hours.")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, default=False, help="One JSON line per job.")
@click.pass_obj
def jobs(cfg: ClientConfig, state: str | None, since_h: float, limit: int,
         as_json: bool) -> None:
    """This tenant's recent jobs, newest first."""
    sys.exit(run_command(_jobs(cfg, state, since_h, limit, as_json)))


async def _jobs(cfg: ClientConfig, state: str | None, since_h: float, limit: int,
                as_json: bool) -> int:
    async with await open_client(cfg) as vf:
        found, truncated = await vf.jobs(state=state,  # type: ignore[arg-type]
                                         since_s=since_h * 3600.0, limit=limit)
    if as_json:
        for status in found:
            click.echo(encode_status(status).decode())
    else:
        click.echo(jobs_table(found, time.time()))
    if truncated:
        click.echo("(more jobs than shown: see --limit, --since-h, --state)", err=True)
    return 0


@cli.command()
@click.argument("job_id")
@click.option("--reason", default="", help="Kept in the job's cancelled event.")
@click.pass_obj
def cancel(cfg: ClientConfig, job_id: str, reason: str) -> None:
    """Cancel a job: a queued one never starts, a running one stops within seconds (its
    partial output deleted; its machine time so far is charged). Exit 0 once it is cancelled
    (now or before), 1 when it had already succeeded or failed."""
    sys.exit(run_command(_cancel(cfg, job_id, reason)))


async def _cancel(cfg: ClientConfig, job_id: str, reason: str) -> int:
    async with await open_client(cfg) as vf:
        reply = await vf.cancel(job_id, reason=reason)
    if reply.ok:
        where = " (it was running: its agent stops it now)" if reply.was_running else ""
        click.echo(f"job {job_id} cancelled{where}")
        return 0
    click.echo(f"job {job_id} had already {reply.state}; nothing to cancel", err=True)
    return 0 if reply.state == "cancelled" else 1


@cli.command()
@click.argument("job_id")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.pass_obj
def result(cfg: ClientConfig, job_id: str, out: Path, wait: bool) -> None:
    """Download a finished job's output (waits for it unless --no-wait)."""
    sys.exit(run_command(_result(cfg, job_id, out, wait)))


async def _result(cfg: ClientConfig, job_id: str, out: Path, wait: bool) -> int:
    async with await open_client(cfg) as vf:
        try:
            done = await vf.result(job_id, timeout_s=None if wait else 0.5)
        except TimeoutError:
            click.echo(f"job {job_id} has not finished (or does not exist)", err=True)
            return 3
        if not isinstance(done, Succeeded):
            click.echo(describe(done), err=True)
            return exit_code(done)
        path = await vf.download(done.output, out)
        click.echo(f"output: {path.resolve()}  (encoder {done.encoder})")
        return 0


@cli.command()
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("demo-out"),
              show_default=True)
@click.option("--seconds", type=click.IntRange(1, 600), default=10, show_default=True,
              help="Length of the generated sample video.")
def demo(out_dir: Path, seconds: int) -> None:
    """Start a private stack, caption a generated video with progress, print the output."""
    sys.exit(run_command(_demo(out_dir.resolve(), seconds)))


async def _demo(out_dir: Path, seconds: int) -> int:
    """SIGTERM (a CI timeout, a supervisor) ends it like Ctrl-C: the private stack is stopped
    instead of leaving its nats-server and agents running."""
    terminated = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, terminated.set)
    body = asyncio.create_task(_demo_body(out_dir, seconds))
    until_term = asyncio.create_task(terminated.wait())
    await asyncio.wait({body, until_term}, return_when=asyncio.FIRST_COMPLETED)
    until_term.cancel()
    if body.done():
        return body.result()
    body.cancel()  # unwinds the stack's context managers, which stop it in order
    with contextlib.suppress(asyncio.CancelledError):
        await body
    click.echo("interrupted", err=True)
    return 130


async def _demo_body(out_dir: Path, seconds: int) -> int:
    video, srt = make_sample(out_dir / "sample", seconds)
    click.echo(f"sample: {video} + {srt}", err=True)
    options = StackOptions(data_dir=out_dir / "stack", port=0, max_agents=1,
                           logs_to_files=True, env={"VIDFLEET_TICK_S": "1"})
    async with Stack(options) as stack:
        click.echo(f"stack: nats-server at {stack.url}; controller with no agent running "
                   f"until a job waits (logs: {options.data_dir})", err=True)
        async with await Client.connect(stack.url, creds_file=stack.creds_file) as vf:
            # Always a real run (not the cached result of the last demo), with its progress.
            job = CaptionJob(video=await vf.upload_input(video), srt=await vf.upload_input(srt),
                             cache=False)
            receipt = await vf.submit(job)
            click.echo(f"job {receipt.job_id}", err=True)
            return await follow_and_fetch(vf, receipt.job_id,
                                           out_dir / "sample.captioned.mp4", 300.0)


cli.add_command(submit)
cli.add_command(status)
cli.add_command(controller)
cli.add_command(simulate)
cli.add_command(creds)
cli.add_command(setup)
cli.add_command(webhooks)
cli.add_command(batch)
cli.add_command(dlq)


def main() -> None:
    cli()

