"""The account layout: what each NATS account holds, exports and imports.

NATS isolates accounts, not users: inside one account a JetStream publish delivers its PubAck to
any reply subject the publisher names (so a denied KV subject can still be written), object-store
chunks live on random subjects no permission can fence, and any publisher may send a rollup that
empties a stream. So every party that must not touch the control plane lives in an account of its
own, and reaches the fleet only through imports that we sign:

- ``FLEET`` holds JetStream (jobs, events, the control KVs, every tenant's object stores); the
  controller and the operator's tools. It exports services and streams publicly, but only
  accounts whose JWTs we sign can import, and each import names exactly what that account needs.
- ``AGENTS`` holds every agent user (no JetStream). Imports: the dispatcher's work, report,
  input and upload services (controller/dispatcher.py: an agent reaches a job, its inputs, its
  events and its result only through the lease the dispatcher gave it), heartbeats and
  renewal. No JetStream API at all, so nothing of any tenant's data but the job it holds. The
  agent role is a *scoped* signing key: its permission template confines a user to its own
  id's subjects and its inbox, and the server refuses a user JWT that carries permissions of
  its own, so no minting bug can widen it.
- One account per tenant (no JetStream): imports its own submit, cancel, query and
  dead-letter subjects, its own events, and its own two object stores, nothing else. Replies
  to a service import are rewritten by the server, so a reply subject named by a tenant or an
  agent lands in its own account, never in ``FLEET``.

Service imports of the JetStream API are renamed under ``FLEET_API_PREFIX``: an account's own
``$JS.API`` would otherwise answer first ("JetStream not enabled for account").

Getting an import wrong is a hole (one tenant reads another's results) or an outage (agents
cannot ack); tests/test_isolation.py tries each attack on a real server.
"""

from __future__ import annotations

from typing import Any

from msgspec import Struct

from broker.subjects import (
    CONTROLLER_HEARTBEAT_SUBJECT,
    FLEET_API_PREFIX,
    agent_inbox_prefix,
    input_subject,
    inputs_bucket,
    renew_subject,
    report_subject,
    results_bucket,
    tenant_events_stream,
    upload_subject,
    work_subject,
)

__all__ = [
    "Tenant",
    "agent_template",
    "agents_imports",
    "fleet_exports",
    "tenant_imports",
]

_JS = "$JS.API."


class Tenant(Struct, frozen=True, kw_only=True):
    name: str
    account: str  # the tenant account's public key


def _service(subject: str, *, stream_response: bool = False) -> dict[str, Any]:
    return {"name": subject, "subject": subject, "type": "service",
            "response_type": "Stream" if stream_response else "Singleton"}


def fleet_exports() -> list[dict[str, Any]]:
    """Everything another account may import from FLEET (each import still names its part)."""
    services = ["submit.>", "cancel.>", "query.>", "deadletters.>", "events.>",
                *_AGENT_SERVICES,
                "$O.>", "$JS.ACK.>", "$JS.FC.>",
                *(f"{_JS}{api}.>" for api in (
                    "STREAM.INFO", "STREAM.MSG.GET", "DIRECT.GET", "STREAM.PURGE",
                    "CONSUMER.CREATE", "CONSUMER.INFO", "CONSUMER.DELETE"))]
    exports = [_service(s) for s in services]
    exports.append(_service(f"{_JS}CONSUMER.MSG.NEXT.>", stream_response=True))
    for subject in ("events.>", "agents.*.control", CONTROLLER_HEARTBEAT_SUBJECT):
        exports.append({"name": subject, "subject": subject, "type": "stream"})
    return exports


def _local(subject: str) -> str:
    """Where an importer sees a FLEET subject: its JetStream API under FLEET_API_PREFIX."""
    return (f"{FLEET_API_PREFIX}.{subject.removeprefix(_JS)}" if subject.startswith(_JS)
            else subject)


def _import(fleet: str, subject: str, kind: str = "service") -> dict[str, Any]:
    claim: dict[str, Any] = {"name": subject, "subject": subject, "account": fleet,
                             "type": kind}
    if (local := _local(subject)) != subject:
        claim["local_subject"] = local
    return claim


def _object_store_api(bucket: str, *, read: bool, write: bool, purge: bool) -> list[str]:
    """What our pull-based download (``read``), an object-store put (``write``) and an
    overwrite or delete (``purge``) need of one bucket. Every use opens the bucket (stream
    info) and looks objects up by name (nats-py: a message get by subject)."""
    stream = f"OBJ_{bucket}"
    subjects = [f"{_JS}STREAM.INFO.{stream}", f"{_JS}STREAM.MSG.GET.{stream}"]
    if read:
        subjects += [f"{_JS}DIRECT.GET.{stream}.>", f"{_JS}CONSUMER.CREATE.{stream}.>",
                     f"{_JS}CONSUMER.MSG.NEXT.{stream}.*", f"{_JS}CONSUMER.DELETE.{stream}.*"]
    if write:
        subjects += [f"$O.{bucket}.C.>", f"$O.{bucket}.M.>"]
    if purge:
        subjects.append(f"{_JS}STREAM.PURGE.{stream}")
    return subjects


def tenant_imports(fleet: str, tenant: str) -> list[dict[str, Any]]:
    """A tenant's whole reach: its submit, cancel, query and dead-letter subjects, its events
    (live, and its own events stream: no consumer of another tenant's is reachable), its two
    object stores."""
    stream = tenant_events_stream(tenant)
    services = [f"submit.{tenant}.>", f"cancel.{tenant}.>", f"query.{tenant}.>",
                f"deadletters.{tenant}.>",
                f"{_JS}STREAM.INFO.{stream}", f"{_JS}DIRECT.GET.{stream}.>",
                f"{_JS}STREAM.MSG.GET.{stream}",
                f"{_JS}CONSUMER.CREATE.{stream}.>", f"{_JS}CONSUMER.MSG.NEXT.{stream}.*",
                f"{_JS}CONSUMER.INFO.{stream}.*", f"{_JS}CONSUMER.DELETE.{stream}.*"]
    for bucket in (inputs_bucket(tenant), results_bucket(tenant)):
        services += _object_store_api(bucket, read=True, write=True, purge=True)
    imports = [_import(fleet, s) for s in services]
    imports.append(_import(fleet, f"events.{tenant}.>", "stream"))
    return imports


# The dispatcher's services and the fleet's liveness subjects, for any agent id: the template
# narrows each to the user's own id.
_AGENT_SERVICES = ("agents.*.heartbeat", renew_subject("*"), work_subject("*"),
                   report_subject("*"), input_subject("*"), upload_subject("*"))


def agents_imports(fleet: str) -> list[dict[str, Any]]:
    """The AGENTS account's imports, for every agent at once: the dispatcher's services,
    heartbeats and renewal, and the controller's commands and liveness. No tenant appears:
    adding one changes nothing here. Each user's template then confines it to its own id."""
    imports = [_import(fleet, s) for s in _AGENT_SERVICES]
    imports += [_import(fleet, s, "stream")
                for s in ("agents.*.control", CONTROLLER_HEARTBEAT_SUBJECT)]
    return imports


def agent_template() -> dict[str, Any]:
    """One agent user's permissions (``{{name()}}`` is its id): its own heartbeats, renewal,
    work requests, reports, input reads and uploads, and its inbox; its commands and the
    controller's heartbeat. No JetStream API, nothing of any other agent."""
    me = "{{name()}}"
    return {
        "pub": {"allow": [s.replace("*", me) for s in _AGENT_SERVICES]},
        "sub": {"allow": [f"{agent_inbox_prefix(me)}.>", f"agents.{me}.control",
                          CONTROLLER_HEARTBEAT_SUBJECT]},
        "subs": -1, "data": -1, "payload": -1,
    }
