"""Every subject, stream, consumer and bucket name on the bus, and the rules for job ids.

Every job belongs to a tenant, and the tenant is the second token of every subject about a job,
so one account's imports can name exactly one tenant's jobs (see broker/accounts.py and
docs/security.md). An agent publishes only on subjects that carry its own id (heartbeats and
the dispatcher's ``fleet.*.<agent_id>`` services), and reads replies on its own inbox prefix.

    submit.<tenant>.<operation>.<job_id>   a tenant asks the control plane to queue a job (JSON
                                           body; request/reply, answered by the gateway)
    cancel.<tenant>.<job_id>               a tenant asks the control plane to cancel a job
                                           (request/reply, answered by the dispatcher)
    query.<tenant>.job.<job_id>            a tenant asks where its job is; query.<tenant>.jobs:
                                           its recent jobs (request/reply, the dispatcher)
    deadletters.<tenant>.list              a tenant's jobs that failed for good; .get.<job_id>,
                                           .retry.<job_id>, .drop.<job_id> (request/reply)
    jobs.<tenant>.<operation>.<job_id>     a queued job (stream JOBS; only the gateway writes)
    events.<tenant>.<job_id>.<kind>.<publisher>
                                           a job's life (stream EVENTS, written by the
                                           controller); publisher is the agent the event is
                                           about, ``queue`` for the server-made queued event,
                                           or ``controller``
    agents.<agent_id>.heartbeat            an agent's liveness (core NATS, not stored)
    agents.<agent_id>.control              the controller's commands to one agent (drain,
                                           cancel the job in hand)
    fleet.renew.<agent_id>                 an agent asks the controller for a fresh JWT
    fleet.work.<agent_id>                  an agent asks the dispatcher for its next job
    fleet.report.<agent_id>                an agent reports on the job it holds (request/reply)
    fleet.input.<agent_id>                 an agent reads an input of the job it holds, chunk by
                                           chunk, through the dispatcher (request/reply)
    fleet.upload.<agent_id>                an agent sends its result, chunk by chunk, to the
                                           dispatcher, which stores it (request/reply)
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
    "DEAD_LETTERS_BUCKET",
    "DEAD_LETTER_INPUTS_BUCKET",
    "DEFAULT_TENANT",
    "EVENTS_STREAM",
    "EXHAUSTED_CONSUMER",
    "EXHAUSTED_STREAM",
    "EXHAUSTED_SUBJECT",
    "FLEET_API_PREFIX",
    "FLEET_BUCKET",
    "JOBSTATE_BUCKET",
    "JOBS_CONSUMER",
    "JOBS_STREAM",
    "JOB_COSTS_BUCKET",
    "JOB_ID_RE",
    "LEASES_BUCKET",
    "QUEUE_PUBLISHER",
    "RESULT_CACHE_BUCKET",
    "TENANT_RE",
    "WEBHOOK_JOBS_BUCKET",
    "WEBHOOK_SETTINGS_BUCKET",
    "agent_control_subject",
    "agent_inbox_prefix",
    "cancel_subject",
    "client_inbox_prefix",
    "dead_letter_subject",
    "event_subject",
    "events_filter",
    "heartbeat_subject",
    "input_subject",
    "inputs_bucket",
    "job_key",
    "job_subject",
    "parse_cancel_subject",
    "parse_dead_letter_subject",
    "parse_event_subject",
    "parse_job_subject",
    "parse_submit_subject",
    "renew_subject",
    "report_subject",
    "results_bucket",
    "submit_subject",
    "tenant_events_stream",
    "upload_subject",
    "validate_job_id",
    "validate_operation",
    "validate_tenant",
    "work_subject",
]

JOBS_STREAM = "JOBS"
JOBS_CONSUMER = "agents"  # read by the dispatcher alone (the name predates it)
# Jobs whose deliveries ran out (every attempt's machine vanished or was stopped): the server's
# MAX_DELIVERIES advisories, kept in a stream so none is lost while the controller is down.
EXHAUSTED_STREAM = "JOBS_EXHAUSTED"
EXHAUSTED_CONSUMER = "reaper"
EXHAUSTED_SUBJECT = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.{JOBS_CONSUMER}"
CONTROLLER_PUBLISHER = "controller"
CONTROLLER_HEARTBEAT_SUBJECT = "controller.heartbeat"
AUTH_BUCKET = "auth"  # the revocation list (see broker/auth_store.py)
FLEET_BUCKET = "fleet"  # the controller's record of its machines; written by it alone
LEASES_BUCKET = "leases"  # which agent holds which job (broker/dispatch.py); the dispatcher's
EVENTS_STREAM = "EVENTS"
JOBSTATE_BUCKET = "jobstate"  # key <tenant>.<job_id>
JOB_COSTS_BUCKET = "jobcost"  # key <tenant>.<job_id>: its ended attempts' machine time, in $
WEBHOOK_SETTINGS_BUCKET = "webhook_settings"  # key tenant.<tenant> (broker/webhooks.py)
WEBHOOK_JOBS_BUCKET = "webhook_jobs"  # a job's webhook URL and its delivery attempts
DEAD_LETTERS_BUCKET = "deadletters"  # key <tenant>.<job_id>: a job that failed for good
DEAD_LETTER_INPUTS_BUCKET = "deadletter-inputs"  # their obj: inputs, <tenant>/<job_id>/<name>
RESULT_CACHE_BUCKET = "resultcache"  # the fleet's build, and <tenant>.<key>: a cached result
QUEUE_PUBLISHER = "queue"
# Tenants and agents reach the fleet's JetStream API through imports under this prefix (an
# account's own ``$JS.API`` would answer first, with "JetStream not enabled for account").
FLEET_API_PREFIX = "$JS.FLEET.API"
# The tenant of a server without auth (development): every client is this tenant.
DEFAULT_TENANT = "default"

TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
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


def validate_tenant(tenant: str) -> str:
    """Return ``tenant`` or raise ValueError saying what a tenant name may contain."""
    if not TENANT_RE.match(tenant):
        raise ValueError(f"invalid tenant name {tenant!r}: use 1-32 characters from a-z 0-9 -, "
                         "starting with a letter or digit")
    return tenant


def validate_operation(operation: str) -> str:
    if not _OPERATION_RE.match(operation):
        raise ValueError(f"invalid operation name {operation!r}")
    return operation


def job_subject(tenant: str, operation: str, job_id: str) -> str:
    return (f"jobs.{validate_tenant(tenant)}.{validate_operation(operation)}."
            f"{validate_job_id(job_id)}")


def submit_subject(tenant: str, operation: str, job_id: str) -> str:
    return (f"submit.{validate_tenant(tenant)}.{validate_operation(operation)}."
            f"{validate_job_id(job_id)}")


def cancel_subject(tenant: str, job_id: str) -> str:
    return f"cancel.{validate_tenant(tenant)}.{validate_job_id(job_id)}"


def parse_cancel_subject(subject: str) -> tuple[str, str]:
    """``cancel.<tenant>.<job_id>`` -> (tenant, job_id), unchecked."""
    parts = subject.split(".")
    if len(parts) != 3 or parts[0] != "cancel":
        raise ValueError(f"not a cancel subject: {subject!r}")
    return parts[1], parts[2]


def dead_letter_subject(tenant: str, action: str, job_id: str = "") -> str:
    """``deadletters.<tenant>.list``, or ``.get``/``.retry``/``.drop`` with ``.<job_id>``."""
    head = f"deadletters.{validate_tenant(tenant)}.{action}"
    return f"{head}.{validate_job_id(job_id)}" if job_id else head


def parse_dead_letter_subject(subject: str) -> tuple[str, str, str]:
    """``deadletters.<tenant>.<action>[.<job_id>]`` -> (tenant, action, job_id or ""),
    unchecked."""
    parts = subject.split(".")
    if len(parts) not in (3, 4) or parts[0] != "deadletters":
        raise ValueError(f"not a dead letter subject: {subject!r}")
    return parts[1], parts[2], parts[3] if len(parts) == 4 else ""


def _four(subject: str, head: str) -> tuple[str, str, str]:
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != head:
        raise ValueError(f"not a {head} subject: {subject!r}")
    return parts[1], parts[2], parts[3]


def parse_job_subject(subject: str) -> tuple[str, str, str]:
    """``jobs.<tenant>.<operation>.<job_id>`` -> (tenant, operation, job_id), unchecked: the
    stream captures only that shape, but tokens may hold anything a subject allows."""
    return _four(subject, "jobs")


def parse_submit_subject(subject: str) -> tuple[str, str, str]:
    """``submit.<tenant>.<operation>.<job_id>`` -> (tenant, operation, job_id), unchecked."""
    return _four(subject, "submit")


def job_key(tenant: str, job_id: str) -> str:
    """A job's key in the job-state KV: job ids are unique per tenant only."""
    return f"{tenant}.{job_id}"


def event_subject(tenant: str, job_id: str, kind: str, publisher: str) -> str:
    return f"events.{tenant}.{job_id}.{kind}.{publisher}"


def events_filter(tenant: str, job_id: str) -> str:
    """The wildcard that follows one job: every kind, every publisher."""
    return f"events.{validate_tenant(tenant)}.{validate_job_id(job_id)}.>"


def parse_event_subject(subject: str) -> tuple[str, str, str, str]:
    """``events.<tenant>.<job_id>.<kind>.<publisher>`` -> (tenant, job_id, kind, publisher)."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[0] != "events":
        raise ValueError(f"not an event subject: {subject!r}")
    return parts[1], parts[2], parts[3], parts[4]


def tenant_events_stream(tenant: str) -> str:
    """The tenant's own copy of its events (sourced from EVENTS): what its clients replay and
    make consumers on. Consumers live on a stream only that tenant reaches, so their names
    cannot be guessed into, and their number is that tenant's quota."""
    return f"EVENTS-{validate_tenant(tenant)}"


def inputs_bucket(tenant: str) -> str:
    """The tenant's own object store of inputs: the tenant writes and reads it; the
    dispatcher reads a held job's inputs for its agent."""
    return f"inputs-{validate_tenant(tenant)}"


def results_bucket(tenant: str) -> str:
    """The tenant's own object store of results: the dispatcher writes an agent's result
    into it; only that tenant reads."""
    return f"results-{validate_tenant(tenant)}"


def heartbeat_subject(agent_id: str) -> str:
    return f"agents.{agent_id}.heartbeat"


def agent_control_subject(agent_id: str) -> str:
    return f"agents.{agent_id}.control"


def renew_subject(agent_id: str) -> str:
    return f"fleet.renew.{agent_id}"


def work_subject(agent_id: str) -> str:
    return f"fleet.work.{agent_id}"


def report_subject(agent_id: str) -> str:
    return f"fleet.report.{agent_id}"


def input_subject(agent_id: str) -> str:
    return f"fleet.input.{agent_id}"


def upload_subject(agent_id: str) -> str:
    return f"fleet.upload.{agent_id}"


def client_inbox_prefix(name: str) -> str:
    """A client's private inbox. Agents' and clients' prefixes differ before the first dot,
    which no name can contain, so no client name can read an agent's replies."""
    return f"_INBOX_C.{name}"


def agent_inbox_prefix(agent_id: str) -> str:
    """A private inbox per agent, so a grant never has to include plain ``_INBOX.>``."""
    return f"_INBOX_A.{agent_id}"
