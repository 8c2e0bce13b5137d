"""The account layout: what each NATS account holds, exports and imports.

NATS isolates accounts, not users: inside one account a JetStream publish delivers its PubAck to
any reply subject the publisher names (so a denied KV subject can still be written), object-store
chunks live on random subjects no permission can fence, and any publisher may send a rollup that
empties a stream. So every party that must not touch the control plane lives in an account of its
own, and reaches the fleet only through imports that we sign:

- ``FLEET`` holds JetStream (jobs, events, the control KVs, every tenant's object stores); the
  controller and the operator's tools. It exports services and streams publicly, but only
  accounts whose JWTs we sign can import, and each import names exactly what that account needs.
- ``AGENTS`` holds every agent user (no JetStream). Imports: the jobs consumer, event and
  heartbeat publishing, renewal, the job-state KV, every tenant's inputs (read) and results
  (write). The agent role is a *scoped* signing key: its permission template confines a user to
  its own events, heartbeats, renewal and inbox, and the server refuses a user JWT that carries
  permissions of its own, so no minting bug can widen it.
- One account per tenant (no JetStream): imports its own submit subject, its own events, and its
  own two object stores, nothing else. Replies to a service import are rewritten by the server,
  so a reply subject named by a tenant or an agent lands in its own account, never in ``FLEET``.

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
    EVENTS_STREAM,
    FLEET_API_PREFIX,
    JOBS_CONSUMER,
    JOBS_STREAM,
    JOBSTATE_BUCKET,
    agent_inbox_prefix,
    inputs_bucket,
    renew_subject,
    results_bucket,
    tenant_events_stream,
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
    services = ["submit.>", "events.>", "agents.*.heartbeat", renew_subject("*"),
                f"$KV.{JOBSTATE_BUCKET}.>", "$O.>", "$JS.ACK.>", "$JS.FC.>",
                *(f"{_JS}{api}.>" for api in (
                    "STREAM.INFO", "STREAM.MSG.GET", "DIRECT.GET", "STREAM.PURGE",
                    "CONSUMER.CREATE", "CONSUMER.INFO", "CONSUMER.DELETE"))]
    exports = [_service(s) for s in services]
    exports.append(_service(f"{_JS}CONSUMER.MSG.NEXT.>", stream_response=True))
    for subject in ("events.>", "agents.*.control", CONTROLLER_HEARTBEAT_SUBJECT):
        exports.append({"name": subject, "subject": subject, "type": "stream"})
    return exports


def _import(fleet: str, subject: str, kind: str = "service") -> dict[str, Any]:
    claim: dict[str, Any] = {"name": subject, "subject": subject, "account": fleet,
                             "type": kind}
    if subject.startswith(_JS):
        claim["local_subject"] = f"{FLEET_API_PREFIX}.{subject.removeprefix(_JS)}"
    return claim


def _object_store_api(bucket: str, *, write: bool, purge: bool) -> list[str]:
    """What reading (our pull-based download), writing and overwriting one bucket needs.
    (nats-py reads an object's metadata with a message get by subject, not a direct get.)"""
    stream = f"OBJ_{bucket}"
    subjects = [f"{_JS}STREAM.INFO.{stream}", f"{_JS}DIRECT.GET.{stream}.>",
                f"{_JS}STREAM.MSG.GET.{stream}",
                f"{_JS}CONSUMER.CREATE.{stream}.>", f"{_JS}CONSUMER.MSG.NEXT.{stream}.*",
                f"{_JS}CONSUMER.DELETE.{stream}.*"]
    if write:
        subjects += [f"$O.{bucket}.C.>", f"$O.{bucket}.M.>"]
    if purge:
        subjects.append(f"{_JS}STREAM.PURGE.{stream}")
    return subjects


def tenant_imports(fleet: str, tenant: str) -> list[dict[str, Any]]:
    """A tenant's whole reach: its submit subject, its events (live, and its own events
    stream: no consumer of another tenant's is reachable), its two object stores."""
    stream = tenant_events_stream(tenant)
    services = [f"submit.{tenant}.>",
                f"{_JS}STREAM.INFO.{stream}", f"{_JS}DIRECT.GET.{stream}.>",
                f"{_JS}STREAM.MSG.GET.{stream}",
                f"{_JS}CONSUMER.CREATE.{stream}.>", f"{_JS}CONSUMER.MSG.NEXT.{stream}.*",
                f"{_JS}CONSUMER.INFO.{stream}.*", f"{_JS}CONSUMER.DELETE.{stream}.*"]
    for bucket in (inputs_bucket(tenant), results_bucket(tenant)):
        services += _object_store_api(bucket, write=True, purge=True)
    imports = [_import(fleet, s) for s in services]
    imports.append(_import(fleet, f"events.{tenant}.>", "stream"))
    return imports


def _agent_reach(tenants: list[Tenant]) -> list[str]:
    subjects = [f"{_JS}CONSUMER.INFO.{JOBS_STREAM}.{JOBS_CONSUMER}",
                f"{_JS}CONSUMER.MSG.NEXT.{JOBS_STREAM}.{JOBS_CONSUMER}",
                f"$JS.ACK.{JOBS_STREAM}.{JOBS_CONSUMER}.>",
                f"{_JS}STREAM.INFO.{EVENTS_STREAM}", f"{_JS}DIRECT.GET.{EVENTS_STREAM}.>",
                f"{_JS}STREAM.INFO.KV_{JOBSTATE_BUCKET}",
                f"{_JS}DIRECT.GET.KV_{JOBSTATE_BUCKET}.>", f"$KV.{JOBSTATE_BUCKET}.>"]
    for t in sorted(tenants, key=lambda t: t.name):
        subjects += _object_store_api(inputs_bucket(t.name), write=False, purge=False)
        subjects += _object_store_api(results_bucket(t.name), write=True, purge=False)
    return subjects


def agents_imports(fleet: str, tenants: list[Tenant]) -> list[dict[str, Any]]:
    """The AGENTS account's imports: the agent role's reach, for every agent at once (each
    user's template then confines it to its own id's subjects)."""
    services = ["events.>", "agents.*.heartbeat", renew_subject("*"), *_agent_reach(tenants)]
    imports = [_import(fleet, s) for s in services]
    imports += [_import(fleet, s, "stream")
                for s in ("agents.*.control", CONTROLLER_HEARTBEAT_SUBJECT)]
    return imports


def _local(subject: str) -> str:
    return (f"{FLEET_API_PREFIX}.{subject.removeprefix(_JS)}" if subject.startswith(_JS)
            else subject)


def agent_template(tenants: list[Tenant]) -> dict[str, Any]:
    """One agent user's permissions (``{{name()}}`` is its id): pull and ack on the jobs
    consumer, its own events, heartbeats and renewal, the job-state KV (any key: residual risk,
    see docs/security.md), every tenant's inputs (read: residual) and results (write), its
    own inbox, its own commands and the controller's heartbeat. No purge, no stream or
    consumer management, no message get by sequence, nothing of any other agent."""
    me = "{{name()}}"
    reach = [_local(s) for s in _agent_reach(tenants)]
    return {
        "pub": {"allow": [*reach, f"events.*.*.*.{me}", f"agents.{me}.heartbeat",
                          renew_subject(me)]},
        "sub": {"allow": [f"{agent_inbox_prefix(me)}.>", f"agents.{me}.control",
                          CONTROLLER_HEARTBEAT_SUBJECT]},
        "subs": -1, "data": -1, "payload": -1,
    }
