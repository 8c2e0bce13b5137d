"""``vidfleet status``, ``vidfleet controller run`` and ``vidfleet simulate``.

The last two run the controller's own entry points (``python -m controller``,
``python -m controller.simulate``) in place of this process: the client package never imports
the controller's code, it only starts it.
"""

from __future__ import annotations

import os
import sys
import time

import click
import msgspec

from broker.fleet import FleetInstance, FleetSummary
from client.commands import ClientConfig, open_client, run_command
from client.display import duration

__all__ = ["controller", "format_status", "simulate", "status"]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="The summary and machines as JSON.")
@click.pass_obj
def status(cfg: ClientConfig, as_json: bool) -> None:
    """The fleet: machines, what they do and cost; backlog in jobs and work-seconds."""
    sys.exit(run_command(_status(cfg, as_json)))


async def _status(cfg: ClientConfig, as_json: bool) -> int:
    async with await open_client(cfg) as vf:
        if vf.is_tenant:  # a tenant's account reaches nothing of the fleet
            click.echo(f"error: these are tenant {vf.tenant!r}'s credentials: `vidfleet "
                       "status` needs the operator's credentials (auth/admin.creds in the data "
                       "dir)", err=True)
            return 1
        summary, machines = await vf.fleet()
    if as_json:
        click.echo(msgspec.json.encode({"summary": summary, "machines": machines}).decode())
    else:
        click.echo(format_status(summary, machines, time.time()))
    return 0


def format_status(summary: FleetSummary | None, machines: list[FleetInstance],
                  now: float) -> str:
    if summary is None:
        return "no controller has reported yet (is `vidfleet up` or a controller running?)"
    age_s = now - summary.at
    lines = [
        f"controller: provider {summary.provider}, last tick {age_s:.0f}s ago"
        + ("  (STALE: is the controller running?)" if age_s > 60 else ""),
        f"backlog:    {max(summary.queued_jobs, 0)} queued, {max(summary.running_jobs, 0)} "
        f"running, ~{max(summary.backlog_work_s, 0.0):.0f} work-seconds",
        f"spend:      ${summary.spend_per_hour:.3f}/h now (cap ${summary.max_spend_per_hour:.2f}"
        f"/h); ${summary.spent_today:.2f} today {summary.day} UTC "
        f"(cap ${summary.max_spend_per_day:.2f})",
    ]
    source = "the provider's bill" if summary.billed_by_provider else "estimated"
    lines.append(f"paid by:    jobs ${summary.attributed_today:.4f} today; no job "
                 f"${summary.unattributed_today:.4f} today (boot, idle, drain), "
                 f"${summary.unattributed_per_hour:.3f}/h now; of "
                 f"${summary.billed_today:.4f} billed today ({source})")
    if summary.objective:
        met = f"NOT MET: {summary.unmet}" if summary.unmet else "the fleet can meet it"
        lines.append(f"objective:  {summary.objective}; {met}")
    if summary.outbids_per_hour:  # learned from interruptible machines taken back
        rates = sorted(summary.outbids_per_hour.items(), key=lambda kv: (-kv[1], kv[0]))
        lines.append("outbids:    " + ", ".join(f"{gpu or '(unknown gpu)'} {per_h:.2f}/h"
                                                for gpu, per_h in rates))
    lines += [f"ALARM:      {alarm}" for alarm in summary.alarms]
    if not machines:
        lines.append("machines:   none")
        return "\n".join(lines)
    head = ("instance", "provider id", "gpu", "$/h", "state", "job", "uptime", "spend")
    rows = [head] + [_row(m, now) for m in machines]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines.append("")
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    return "\n".join(lines)


def _row(m: FleetInstance, now: float) -> tuple[str, ...]:
    up_s = max(0.0, now - m.launched_at)
    state = m.state if m.state != "serving" else (m.agent_state or "serving")
    job = m.job_id or "-"
    if len(m.jobs) > 1:  # several jobs at once (VIDFLEET_SLOTS)
        job += f" +{len(m.jobs) - 1}"
    return (m.label, m.provider_id or "-", m.gpu_name or "-", f"{m.price_per_hour:.3f}",
            state, job, duration(up_s), f"${m.price_per_hour * up_s / 3600:.3f}")


@click.group()
def controller() -> None:
    """The controller that rents and destroys machines."""


@controller.command(context_settings={"ignore_unknown_options": True})
@click.option("--provider", type=click.Choice(["local", "vast"]), default=None,
              help="Where machines come from [env VIDFLEET_PROVIDER; default local].")
@click.option("--max-instances", type=int, default=None, help="[env VIDFLEET_MAX_INSTANCES]")
@click.option("--max-spend-per-hour", type=float, default=None,
              help="Hard cap on the fleet's $/hour [env VIDFLEET_MAX_SPEND_PER_HOUR].")
@click.option("--max-spend-per-day", type=float, default=None,
              help="Hard cap on $ per UTC day [env VIDFLEET_MAX_SPEND_PER_DAY].")
@click.option("--idle-timeout-s", type=float, default=None, help="[env VIDFLEET_IDLE_TIMEOUT_S]")
@click.option("--vast-image", default=None, help="The agent image [env VIDFLEET_VAST_IMAGE].")
@click.pass_obj
def run(cfg: ClientConfig, **flags: object) -> None:
    """Run the controller in the foreground (settings: VIDFLEET_* variables, see README;
    the Vast.ai key only from VIDFLEET_VAST_API_KEY, never a flag)."""
    env = dict(os.environ, VIDFLEET_NATS_URL=cfg.nats_url)
    # The global --creds and --tls-ca go to the controller too (it would otherwise connect
    # with none, and wait forever on a server that wants them).
    if cfg.creds_file:
        env["VIDFLEET_CREDS_FILE"] = cfg.creds_file
    if cfg.tls_ca_file:
        env["VIDFLEET_TLS_CA_FILE"] = cfg.tls_ca_file
    env |= {f"VIDFLEET_{name.upper()}": str(value) for name, value in flags.items()
            if value is not None}
    os.execve(sys.executable, [sys.executable, "-m", "controller"], env)


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                 "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def simulate(args: tuple[str, ...]) -> None:
    """Replay a job-arrival trace through the scaling policy (--help for its options)."""
    os.execv(sys.executable, [sys.executable, "-m", "controller.simulate", *args])
