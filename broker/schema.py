"""JSON Schemas of every payload, generated from the Structs so they can never drift.

``python -m broker.schema docs/schema`` rewrites the checked-in files; a test fails when they
differ from what the Structs say, so a contract change is always visible in review.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgspec

from broker.dead_letters import DeadLetterReply, DeadLettersQuery, DeadLettersReply
from broker.dispatch import Report, ReportReply, WorkReply, WorkRequest
from broker.events import Cancelled, Failed, Progress, Requeued, Retrying, Started, Succeeded
from broker.fleet import AgentCommand, ControllerBeat, FleetInstance, FleetSummary, RenewReply
from broker.heartbeats import Heartbeat
from broker.jobs import OPERATIONS
from broker.queries import JobsQuery, JobsReply, JobStatusReply
from broker.submit import CancelReply, CancelRequest, SubmitReply

__all__ = ["schemas", "write_schemas"]


def schemas() -> dict[str, dict]:
    """File name -> JSON Schema document."""
    out: dict[str, dict] = {}
    for operation, cls in OPERATIONS.items():
        doc = msgspec.json.schema(cls)
        doc["title"] = f"vidfleet job: {operation}"
        doc["description"] = (f"Body of a request on submit.<tenant>.{operation}.<job_id> "
                              f"(stored as jobs.<tenant>.{operation}.<job_id>). "
                              + (cls.__doc__ or "").strip())
        out[f"job.{operation}.json"] = doc
    # The bodies that exist: a queued event has none (its facts are headers), so its Struct
    # is not part of what a body may be.
    events = msgspec.json.schema(
        Started | Progress | Retrying | Succeeded | Failed | Cancelled | Requeued)
    events["title"] = "vidfleet job event"
    events["description"] = ("Body of a message on events.<tenant>.<job_id>.<kind>.<publisher>; "
                             "the "
                             "'kind' field equals the subject's kind token. The queued event "
                             "has an empty body (see docs/protocol.md).")
    out["event.json"] = events
    hb = msgspec.json.schema(Heartbeat)
    hb["title"] = "vidfleet agent heartbeat"
    out["heartbeat.json"] = hb
    kinds: tuple[tuple[str, object, str, str], ...] = (
            ("fleet.instance.json", FleetInstance, "vidfleet fleet record",
             "Value of key instances.<label> in the KV bucket fleet (written by the controller)."),
            ("fleet.summary.json", FleetSummary, "vidfleet fleet summary",
             "Value of key summary in the KV bucket fleet (written by the controller each tick)."),
            ("controller.heartbeat.json", ControllerBeat, "vidfleet controller heartbeat",
             "Body of a message on controller.heartbeat (core NATS)."),
            ("agent.command.json", AgentCommand, "vidfleet agent command",
             "Body of a message on agents.<agent_id>.control (core NATS)."),
            ("submit.reply.json", SubmitReply, "vidfleet submit reply",
             "The gateway's reply to a request on submit.<tenant>.<operation>.<job_id>."),
            ("cancel.request.json", CancelRequest, "vidfleet cancel request",
             "Body of a request on cancel.<tenant>.<job_id> (may be empty)."),
            ("cancel.reply.json", CancelReply, "vidfleet cancel reply",
             "The dispatcher's reply to a request on cancel.<tenant>.<job_id>."),
            ("job.status.reply.json", JobStatusReply, "vidfleet job status reply",
             "The controller's reply to a request on query.<tenant>.job.<job_id> (empty "
             "body)."),
            ("jobs.query.json", JobsQuery, "vidfleet job listing query",
             "Body of a request on query.<tenant>.jobs (may be empty)."),
            ("jobs.reply.json", JobsReply, "vidfleet job listing reply",
             "The controller's reply to a request on query.<tenant>.jobs."),
            ("deadletters.query.json", DeadLettersQuery, "vidfleet dead letter listing query",
             "Body of a request on deadletters.<tenant>.list (may be empty)."),
            ("deadletters.reply.json", DeadLettersReply, "vidfleet dead letter listing reply",
             "The controller's reply to a request on deadletters.<tenant>.list."),
            ("deadletter.reply.json", DeadLetterReply, "vidfleet dead letter reply",
             "The controller's reply to a request on deadletters.<tenant>.get.<job_id>, "
             ".retry.<job_id> or .drop.<job_id> (empty body)."),
            ("renew.reply.json", RenewReply, "vidfleet credential renewal reply",
             "The controller's reply to a request on fleet.renew.<agent_id> (empty body)."),
            ("work.request.json", WorkRequest, "vidfleet work request",
             "Body of a request on fleet.work.<agent_id> (an agent asks for a job)."),
            ("work.reply.json", WorkReply, "vidfleet work reply",
             "The dispatcher's reply to a request on fleet.work.<agent_id>."),
            ("report.json", Report, "vidfleet report",
             "Body of a request on fleet.report.<agent_id>: a hold, a release, or an event "
             "of the job the agent holds."),
            ("report.reply.json", ReportReply, "vidfleet report reply",
             "The dispatcher's reply on fleet.report.<agent_id> and fleet.upload.<agent_id>."))
    for name, shape, title, where in kinds:
        doc = msgspec.json.schema(shape)
        doc["title"] = title
        doc["description"] = where
        out[name] = doc
    return out


def render(doc: dict) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, doc in schemas().items():
        path = directory / name
        path.write_text(render(doc), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_schemas(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/schema")):
        print(p)
