"""``vidfleet status``: the fleet table and the summary, from the fleet KV."""

from __future__ import annotations

import json

from msgspec import structs

from broker.fleet import FleetInstance, FleetSummary
from client.fleet_cli import format_status
from controller.fleet_store import FleetStore
from tests.test_cli import vidfleet

NOW = 1_800_000_000.0
SUMMARY = FleetSummary(at=NOW - 3, provider="vast", queued_jobs=12, running_jobs=2,
                       backlog_work_s=840.0, spend_per_hour=0.9, spent_today=4.25,
                       day="2027-01-15", max_spend_per_hour=5.0, max_spend_per_day=50.0,
                       alarms=["offer search failed: HTTP 503"],
                       objective="every queued job started within 120 s",
                       unmet="3 more machines: max_instances (2) caps the fleet")
BUSY = FleetInstance(label="vf-aa", provider="vast", state="serving", launched_at=NOW - 3900,
                     price_per_hour=0.5, machine_id=7, gpu_name="RTX 4090", provider_id="1234",
                     first_heartbeat_at=NOW - 3800, agent_state="busy", job_id="job-1")
BOOTING = FleetInstance(label="vf-bb", provider="vast", state="booting", launched_at=NOW - 90,
                        price_per_hour=0.4, machine_id=8, gpu_name="RTX 3090",
                        provider_id="1235")


def test_format_status_shows_backlog_spend_alarms_and_each_machine() -> None:
    text = format_status(SUMMARY, [BUSY, BOOTING], NOW)
    assert "12 queued, 2 running, ~840 work-seconds" in text
    assert "$0.900/h now (cap $5.00/h); $4.25 today 2027-01-15 UTC (cap $50.00)" in text
    assert "ALARM:      offer search failed: HTTP 503" in text
    assert ("objective:  every queued job started within 120 s; NOT MET: 3 more machines: "
            "max_instances (2) caps the fleet") in text
    met = format_status(structs.replace(SUMMARY, unmet=""), [], NOW)
    assert "objective:  every queued job started within 120 s; the fleet can meet it" in met
    assert "outbids" not in text  # none learned: on-demand machines, or none taken back yet
    learned = format_status(structs.replace(SUMMARY, outbids_per_hour={
        "RTX 3060": 0.25, "RTX 4090": 1.5}), [], NOW)
    assert "outbids:    RTX 4090 1.50/h, RTX 3060 0.25/h" in learned
    busy = next(line for line in text.splitlines() if line.startswith("vf-aa"))
    assert busy.split() == ["vf-aa", "1234", "RTX", "4090", "0.500", "busy", "job-1", "1h05m",
                            "$0.542"]
    two = format_status(SUMMARY, [structs.replace(BUSY, slots=2, jobs=["job-1", "job-2"])],
                        NOW)
    assert next(line for line in two.splitlines() if line.startswith("vf-aa")).split()[6:8] \
        == ["job-1", "+1"]  # two jobs at once
    booting = next(line for line in text.splitlines() if line.startswith("vf-bb"))
    assert "booting" in booting and "1m30s" in booting


def test_format_status_before_any_controller_and_when_stale() -> None:
    assert "no controller has reported" in format_status(None, [], NOW)
    assert "STALE" in format_status(SUMMARY, [], NOW + 600)


async def test_status_command_reads_the_fleet_bucket(js, nats_server) -> None:
    store = await FleetStore.open(js)
    await store.put(BUSY)
    await store.put_summary(SUMMARY)
    rc, out, err = await vidfleet(nats_server, "status",
                                  creds=nats_server.auth.admin_creds)
    assert rc == 0, err
    assert "vf-aa" in out and "RTX 4090" in out and "840 work-seconds" in out
    rc, out, _ = await vidfleet(nats_server, "status", "--json",
                                creds=nats_server.auth.admin_creds)
    doc = json.loads(out)
    assert doc["summary"]["queued_jobs"] == 12 and doc["machines"][0]["label"] == "vf-aa"
