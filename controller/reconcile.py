"""Reconciliation, pure: the fleet KV's records vs the provider's list vs the agents' heartbeats.

Each tick (and first thing after a restart) ``reconcile`` answers: which records are still
true, which machines the provider has that no record knows (orphans: destroy), which records
name machines that are gone (forget), which machines failed to boot or will never serve
(destroy, avoid that machine), and what needs a person (alarms). A provider error or an
implausibly empty list is an alarm and changes nothing: reading an outage as "zero instances"
would forget every machine, which then bills as an orphan until the provider answers again,
while the controller rents duplicates.

``snapshot_instances`` turns the reconciled records into the policy's view.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from msgspec import Struct, structs

from broker.fleet import FleetInstance
from broker.heartbeats import Heartbeat
from controller.policy import Instance
from controller.providers.base import InstanceInfo

__all__ = ["OUTBID", "UNCONFIRMED_DRAIN", "Reconciled", "Seen", "Terminate", "reconcile",
           "snapshot_instances"]

# A draining machine whose agent has not yet said so may have pulled a job just before the
# command arrived; the policy must treat it as busy until the agent confirms.
UNCONFIRMED_DRAIN = "unconfirmed-drain"
# How a destroy reason starts when the market took an interruptible machine back: the
# controller learns each GPU model's outbid rate from these (controller/estimate.py).
OUTBID = "outbid"


class Seen(Struct, frozen=True, kw_only=True):
    """The last heartbeat of an agent and when this controller received it."""

    beat: Heartbeat
    received_at: float


class Terminate(Struct, frozen=True, kw_only=True):
    provider_id: str
    label: str
    reason: str
    avoid_machine: int | None = None


class Reconciled(Struct, frozen=True, kw_only=True):
    records: dict[str, FleetInstance]  # label -> the record as it should now be stored
    forget: list[str]  # labels whose machine is verified gone: delete their records
    terminate: list[Terminate]  # orphans and failed machines
    alarms: list[str]
    rent_blocked: str | None = None  # set: do not rent this tick (provider unreadable)
    misconfigured: str | None = None  # set: our image cannot start anywhere; stop renting
    trusted: bool = True  # False: the provider's list was not usable this tick


def reconcile(records: dict[str, FleetInstance], listed: list[InstanceInfo] | None,
              seen: dict[str, Seen], *, now: float, launch_grace_s: float,
              heartbeat_timeout_s: float, lists_own_only: bool = False,
              listening_since: float = 0.0) -> Reconciled:
    """``listed`` is the provider's answer for our label prefix, or None when it failed.
    ``lists_own_only``: the provider lists only what this process launched (local agents):
    an agent it does not list that still heartbeats is an earlier controller's, finishing
    its job (its parent died); it is kept as draining, neither forgotten (which revokes its
    credentials, cutting the job off) nor read as a provider outage (which rents nothing).
    One not heard from is given ``heartbeat_timeout_s`` from ``listening_since`` (when
    this controller began to hear heartbeats) to speak up."""
    records = {label: _with_heartbeat(rec, seen.get(label)) for label, rec in records.items()}
    if listed is None:
        return Reconciled(records=records, forget=[], terminate=[], trusted=False,
                          alarms=["provider list failed: nothing destroyed or forgotten"],
                          rent_blocked="the provider's instance list is unreadable")
    alive = [label for label, rec in records.items()
             if label in seen and now - seen[label].received_at <= heartbeat_timeout_s
             and rec.state != "destroying"]
    if not listed and alive and not lists_own_only:
        return Reconciled(records=records, forget=[], terminate=[], trusted=False,
                          alarms=[f"provider lists none of our machines while {len(alive)} "
                                  "of their agents heartbeat: list ignored"],
                          rent_blocked="the provider's instance list is implausibly empty")
    out = _Outcome(records)
    by_label = {info.label: info for info in listed}
    for info in listed:
        if info.label in records:
            out.match(records[info.label], info)
        else:
            out.terminate.append(Terminate(
                provider_id=info.provider_id, label=info.label,
                reason="orphan: labelled as ours but unknown to the fleet records"))
    for label, rec in list(out.records.items()):
        if label in by_label:
            continue
        fresh = now - rec.launched_at < launch_grace_s
        if fresh and (rec.state == "launching"
                      or (rec.state == "booting" and rec.first_heartbeat_at is None)):
            continue  # the create may still be in flight, or the list lags behind it
        if lists_own_only and (label in alive or (
                label not in seen and now - listening_since < heartbeat_timeout_s)):
            # Adrift: let it finish, then forget it.
            out.records[label] = structs.replace(
                rec, state="draining", reason="started by an earlier controller: finishing")
            continue
        del out.records[label]
        out.forget.append(label)
    return Reconciled(records=out.records, forget=out.forget, terminate=out.terminate,
                      alarms=[], misconfigured=out.misconfigured)


class _Outcome:
    def __init__(self, records: dict[str, FleetInstance]) -> None:
        self.records = dict(records)
        self.forget: list[str] = []
        self.terminate: list[Terminate] = []
        self.misconfigured: str | None = None

    def match(self, rec: FleetInstance, info: InstanceInfo) -> None:
        if rec.provider_id is None or rec.state == "launching":
            rec = structs.replace(rec, provider_id=info.provider_id,
                                  state="booting" if rec.state == "launching" else rec.state)
        if rec.gpu_name == "" and info.gpu_name:
            rec = structs.replace(rec, gpu_name=info.gpu_name)
        reason = _end_reason(rec, info)
        if reason is not None:
            never_served = rec.first_heartbeat_at is None
            avoid = (info.machine_id if (never_served and info.state != "exited")
                     or info.interrupted else None)
            self.terminate.append(Terminate(provider_id=info.provider_id, label=rec.label,
                                            reason=reason, avoid_machine=avoid))
            rec = structs.replace(rec, state="destroying", reason=reason)
            if info.state == "misconfigured":
                self.misconfigured = f"machine {rec.label} cannot start our image: " + (
                    info.detail or "no detail")
        self.records[rec.label] = rec


def _end_reason(rec: FleetInstance, info: InstanceInfo) -> str | None:
    if rec.state == "destroying":
        return rec.reason or "destroying"  # terminate again until the provider stops listing it
    if info.interrupted:
        return f"{OUTBID}: the provider stopped this interruptible machine"
    if rec.state == "draining" and info.state in ("failed", "exited"):
        return "drained: its agent finished and stopped"
    if info.state in ("failed", "misconfigured"):
        return f"provider says {info.state}: {info.detail or 'no detail'}"
    if info.state == "exited":
        return "agent process exited"
    if rec.agent_state == "stopped" and rec.job_id is None:
        return "agent stopped"
    return None


def _with_heartbeat(rec: FleetInstance, seen: Seen | None) -> FleetInstance:
    if seen is None or rec.state == "destroying":
        return rec
    beat = seen.beat
    idle_since = rec.idle_since
    if beat.state == "idle" and beat.job_id is None:
        idle_since = idle_since if rec.agent_state == "idle" else seen.received_at
    else:
        idle_since = None
    state = "serving" if rec.state in ("launching", "booting") else rec.state
    return structs.replace(
        rec, state=state, agent_state=beat.state, job_id=beat.job_id, idle_since=idle_since,
        jobs_done=beat.jobs_done, first_heartbeat_at=rec.first_heartbeat_at or seen.received_at,
        slots=max(1, beat.slots), jobs=list(beat.jobs))


def snapshot_instances(records: dict[str, FleetInstance], seen: dict[str, Seen], *,
                       heard_since: float,
                       holds: Callable[[str], list[str]] | None = None) -> tuple[Instance, ...]:
    """The policy's view. ``heard_since``: when this controller (re)started listening; no
    agent's last heartbeat counts as older than that, or a restart or a reconnect after an
    outage would read every machine as silent and destroy it mid-job. ``holds``: the jobs a
    machine's agent holds leases for (the dispatcher's word). A machine holding one is up and
    busy whatever its record says: a controller killed between the agent's first job and its
    next record write left it "booting", and the next one destroyed it as a spare."""
    out = []
    for rec in records.values():
        held = holds(rec.label) if holds is not None else []
        up = rec.first_heartbeat_at is not None or bool(held)
        last = seen[rec.label].received_at if rec.label in seen else None
        if up:
            last = max(last or heard_since, heard_since)
        job = _policy_job(rec) or (held[0] if held else None)
        out.append(Instance(instance_id=rec.label, machine_id=rec.machine_id,
                            price_per_hour=rec.price_per_hour,
                            state=_policy_state(rec, up=up, held=bool(held)),
                            launched_at=rec.launched_at, last_heartbeat_at=last,
                            idle_since=rec.idle_since, job_id=job,
                            jobs=max(len(held), job is not None),
                            slots=rec.slots if rec.first_heartbeat_at else None))
    return tuple(out)


def _policy_state(rec: FleetInstance, *, up: bool,
                  held: bool) -> Literal["booting", "idle", "busy", "draining"]:
    if rec.state in ("draining", "destroying"):
        return "draining"
    if not up:
        return "booting"
    if rec.agent_state == "busy" or rec.job_id is not None or held:
        return "busy"
    if rec.agent_state in ("draining", "stopped"):
        return "draining"
    return "idle"


def _policy_job(rec: FleetInstance) -> str | None:
    if rec.state == "draining" and rec.agent_state not in ("draining", "stopped"):
        return rec.job_id or UNCONFIRMED_DRAIN
    return rec.job_id
