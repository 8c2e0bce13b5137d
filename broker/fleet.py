"""The fleet on the bus: the controller's records, its liveness, and its commands to agents.

KV bucket ``fleet`` (written by the controller alone, read by ``vidfleet status``):

    instances.<label>     FleetInstance: one machine the controller rented, from the intent to
                          rent (written *before* the provider is asked, so a crash mid-create
                          leaves a record to reconcile against) until it is verified gone
    summary               FleetSummary: backlog, spend and alarms at the last tick

``controller.heartbeat`` (core NATS) carries ``ControllerBeat``; an agent that hears none for its
dead-man time while it has no work destroys its own machine, so a dead controller cannot leave
GPUs billing. ``agents.<agent_id>.control`` carries ``AgentCommand``.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import Struct

__all__ = [
    "SUMMARY_KEY",
    "AgentCommand",
    "ControllerBeat",
    "FleetInstance",
    "FleetState",
    "FleetSummary",
    "RenewReply",
    "decode_command",
    "decode_controller_beat",
    "decode_fleet_instance",
    "decode_fleet_summary",
    "decode_renew_reply",
    "encode",
    "instance_key",
]

SUMMARY_KEY = "summary"

# launching: the intent is recorded, the provider may or may not have created it yet.
# booting: the provider has it; no heartbeat from its agent yet.
# serving: its agent heartbeats. draining: told to finish its job and stop pulling.
# destroying: terminate was sent; the record goes once the provider no longer lists it.
FleetState = Literal["launching", "booting", "serving", "draining", "destroying"]


class FleetInstance(Struct, frozen=True, kw_only=True):
    label: str  # unique per launch; the agent id on the bus and the provider's label
    provider: str
    state: FleetState
    launched_at: float  # unix seconds the intent was recorded
    price_per_hour: float
    machine_id: int
    gpu_name: str = ""
    offer_id: int | None = None
    provider_id: str | None = None  # None until the provider's create answered
    first_heartbeat_at: float | None = None
    agent_state: str | None = None  # the last heartbeat's state: idle, busy, draining...
    job_id: str | None = None
    idle_since: float | None = None
    jobs_done: int = 0
    slots: int = 1  # jobs its agent runs at once (its heartbeat's; capped by the dispatcher)
    jobs: list[str] = []  # every job in hand (job_id is one of them)
    reason: str | None = None  # why it is draining or being destroyed
    agent_key: str | None = None  # its agent's NATS user key: revoked when it is destroyed


class FleetSummary(Struct, frozen=True, kw_only=True):
    at: float
    provider: str
    queued_jobs: int
    running_jobs: int
    backlog_work_s: float
    spend_per_hour: float  # the fleet's burn rate now
    spent_today: float  # dollars since UTC midnight, as the controller accrued them
    day: str  # the UTC date spent_today belongs to, YYYY-MM-DD
    max_spend_per_hour: float
    max_spend_per_day: float
    alarms: list[str] = []  # what needs a person: provider errors, config errors, caps hit
    objective: str = ""  # what the policy aims at: "every queued job started within 120 s"
    unmet: str = ""  # why the last tick could not rent what the objective needs; "" if it could
    # Outbids per machine-hour by GPU model, learned from the fleet's interruptible machines
    # (each model's count shrunk toward the rate over all); empty until the first outbid.
    outbids_per_hour: dict[str, float] = {}
    # Who paid for the machine time. billed_today: the provider's own bill since UTC midnight
    # when it tells (billed_by_provider; Vast.ai: the account credit spent), else spent_today.
    # attributed_today: the jobs' share (their leases' machine time, in their cost_usd);
    # unattributed: the rest, which no job paid for (boot, idle, drain), today and per hour
    # now. attributed_today + unattributed_today == billed_today.
    billed_today: float = 0.0
    billed_by_provider: bool = False
    attributed_today: float = 0.0
    unattributed_today: float = 0.0
    unattributed_per_hour: float = 0.0
    # For a restarted controller to resume the day: leases ended today, the credit at its start.
    attributed_ended_today: float = 0.0
    credit_at_day_start: float | None = None


class ControllerBeat(Struct, frozen=True, kw_only=True):
    at: float
    interval_s: float


class RenewReply(Struct, frozen=True, kw_only=True):
    """The controller's answer on ``fleet.renew.<agent_id>``: a fresh JWT for the agent's own
    key (the seed never travels again), or why not."""

    jwt: str = ""
    expires_at: float = 0.0
    error: str = ""


class AgentCommand(Struct, frozen=True, kw_only=True):
    """``drain``: finish the job in hand, take no more, stop. ``cancel``: the job ``tenant`` /
    ``job_id`` was cancelled: if it is the one in hand, stop it now (kill FFmpeg, delete its
    files) and report nothing; the agent then asks for its next job."""

    command: Literal["drain", "cancel"]
    reason: str = ""
    tenant: str = ""
    job_id: str = ""


_ENCODER = msgspec.json.Encoder()
_INSTANCE = msgspec.json.Decoder(FleetInstance)
_SUMMARY = msgspec.json.Decoder(FleetSummary)
_BEAT = msgspec.json.Decoder(ControllerBeat)
_COMMAND = msgspec.json.Decoder(AgentCommand)
_RENEW = msgspec.json.Decoder(RenewReply)


def instance_key(label: str) -> str:
    return f"instances.{label}"


def encode(value: FleetInstance | FleetSummary | ControllerBeat | AgentCommand | RenewReply,
           ) -> bytes:
    return _ENCODER.encode(value)


def decode_fleet_instance(data: bytes) -> FleetInstance:
    return _INSTANCE.decode(data)


def decode_fleet_summary(data: bytes) -> FleetSummary:
    return _SUMMARY.decode(data)


def decode_controller_beat(data: bytes) -> ControllerBeat:
    return _BEAT.decode(data)


def decode_command(data: bytes) -> AgentCommand:
    return _COMMAND.decode(data)


def decode_renew_reply(data: bytes) -> RenewReply:
    return _RENEW.decode(data)
