"""Every subject, stream, consumer and bucket name on the bus, and the rules for job ids.

The layout is chosen so that per-agent permissions can be granted later without renaming
anything: an agent publishes only on subjects that end in (events) or start with (heartbeats)
its own id, and reads replies on its own inbox prefix.

    jobs.<operation>.<job_id>              a job request (JSON body; stream JOBS)
    events.<job_id>.<kind>.<publisher>     a job's life (stream EVENTS); publisher is the agent
                                           id, or ``queue`` for the server-made queued event
    agents.<agent_id>.heartbeat            an agent's liveness (core NATS, not stored)
    agents.<agent_id>.control              the controller's commands to one agent (drain)
    fleet.renew.<agent_id>                 an agent asks the controller for a fresh JWT
    controller.heartbeat                   the controller's liveness, for the agents' dead-man
                                           switch (core NATS, not stored)

Getting a name wrong here silently splits the bus: a job published on a subject no stream
captures is lost without an error for a plain ``nc.publish``.
"""

from __future__ import annotations

import re

__all__ = [
    "AGENT_ID_RE",
    "AUTH_BUCKET",
    "CONTROLLER_HEARTBEAT_SUBJECT",
    "CONTROLLER_PUBLISHER",
    "EVENTS_STREAM",
    "EXHAUSTED_CONSUMER",
    "EXHAUSTED_STREAM",
    "EXHAUSTED_SUBJECT",
    "FLEET_BUCKET",
    "INPUTS_BUCKET",
    "JOBSTATE_BUCKET",
    "JOBS_CONSUMER",
    "JOBS_STREAM",
    "JOB_ID_RE",
    "QUEUE_PUBLISHER",
    "RESULTS_BUCKET",
    "agent_control_subject",
    "agent_inbox_prefix",
    "client_inbox_prefix",
    "event_subject",
    "events_filter",
    "heartbeat_subject",
    "job_subject",
    "parse_event_subject",
    "parse_job_subject",
    "renew_subject",
    "validate_job_id",
]

JOBS_STREAM = "JOBS"
JOBS_CONSUMER = "agents"
# Jobs whose deliveries ran out (every attempt's machine vanished or was stopped): the server's
# MAX_DELIVERIES advisories, kept in a stream so none is lost while the controller is down.
EXHAUSTED_STREAM = "JOBS_EXHAUSTED"
EXHAUSTED_CONSUMER = "reaper"
EXHAUSTED_SUBJECT = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.{JOBS_CONSUMER}"
CONTROLLER_PUBLISHER = "controller"
CONTROLLER_HEARTBEAT_SUBJECT = "controller.heartbeat"
AUTH_BUCKET = "auth"  # the revocation list (see broker/auth_store.py)
FLEET_BUCKET = "fleet"  # the controller's record of its machines; written by it alone
EVENTS_STREAM = "EVENTS"
JOBSTATE_BUCKET = "jobstate"
INPUTS_BUCKET = "inputs"
RESULTS_BUCKET = "results"
QUEUE_PUBLISHER = "queue"

JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
AGENT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_OPERATION_RE = re.compile(r"^[a-z0-9_]{1,32}$")


def validate_job_id(job_id: str) -> str:
    """Return ``job_id`` or raise ValueError saying what a job id may contain."""
    if not JOB_ID_RE.match(job_id):
        raise ValueError(
            f"invalid job id {job_id!r}: use 1-64 characters from A-Z a-z 0-9 _ -"
        )
    return job_id


def job_subject(operation: str, job_id: str) -> str:
    if not _OPERATION_RE.match(operation):
        raise ValueError(f"invalid operation name {operation!r}")
    return f"jobs.{operation}.{validate_job_id(job_id)}"


def parse_job_subject(subject: str) -> tuple[str, str]:
    """``jobs.<operation>.<job_id>`` -> (operation, job_id). The stream captures only that shape."""
    parts = subject.split(".")
    if len(parts) != 3 or parts[0] != "jobs":
        raise ValueError(f"not a job subject: {subject!r}")
    return parts[1], parts[2]


def event_subject(job_id: str, kind: str, publisher: str) -> str:
    return f"events.{job_id}.{kind}.{publisher}"


def events_filter(job_id: str) -> str:
    """The wildcard that follows one job: every kind, every publisher."""
    return f"events.{validate_job_id(job_id)}.>"


def parse_event_subject(subject: str) -> tuple[str, str, str]:
    """``events.<job_id>.<kind>.<publisher>`` -> (job_id, kind, publisher)."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != "events":
        raise ValueError(f"not an event subject: {subject!r}")
    return parts[1], parts[2], parts[3]


def heartbeat_subject(agent_id: str) -> str:
    return f"agents.{agent_id}.heartbeat"


def agent_control_subject(agent_id: str) -> str:
    return f"agents.{agent_id}.control"


def renew_subject(agent_id: str) -> str:
    return f"fleet.renew.{agent_id}"


def client_inbox_prefix(name: str) -> str:
    """A client's private inbox. Agents' and clients' prefixes differ before the first dot,
    which no name can contain, so no client name can read an agent's replies."""
    return f"_INBOX_C.{name}"


def agent_inbox_prefix(agent_id: str) -> str:
    """A private inbox per agent, so a grant never has to include plain ``_INBOX.>``."""
    return f"_INBOX_A.{agent_id}"
