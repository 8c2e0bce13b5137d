"""Reconciliation as a table: records vs the provider's list vs heartbeats."""

from __future__ import annotations

import asyncio

import pytest
from msgspec import structs

from broker.dispatch import Lease
from broker.fleet import FleetInstance, FleetState
from broker.heartbeats import Heartbeat, encode_heartbeat
from controller.attribution import Attribution
from controller.observe import HeartbeatBook
from controller.policy import Policy, Snapshot, decide
from controller.providers.base import InstanceInfo, InstanceState
from controller.reconcile import UNCONFIRMED_DRAIN, Seen, reconcile, snapshot_instances
from controller.spend import SpendMeter

NOW = 1_800_000_000.0


def rec(label: str, state: FleetState = "serving", *, provider_id: str | None = "p-1",
        first_beat: float | None = NOW - 100, launched_at: float = NOW - 200,
        agent_state: str | None = "idle", job_id: str | None = None) -> FleetInstance:
    return FleetInstance(label=label, provider="vast", state=state, launched_at=launched_at,
                         price_per_hour=0.4, machine_id=7, provider_id=provider_id,
                         first_heartbeat_at=first_beat, agent_state=agent_state, job_id=job_id)


def listed(label: str, state: InstanceState = "running", *, provider_id: str = "p-1",
           detail: str = "") -> InstanceInfo:
    return InstanceInfo(provider_id=provider_id, label=label, state=state, machine_id=7,
                        price_per_hour=0.4, started_at=NOW - 200, detail=detail)


def seen(label: str, state: str = "idle", job_id: str | None = None,
         at: float = NOW - 1) -> Seen:
    beat = Heartbeat(agent_id=label, state=state, at=at, encoder="h264_nvenc",  # type: ignore[arg-type]
                     job_id=job_id)
    return Seen(beat=beat, received_at=at)


def run(records: list[FleetInstance], provider: list[InstanceInfo] | None,
        beats: list[Seen] = ()):  # type: ignore[assignment]
    return reconcile({r.label: r for r in records}, provider,
                     {s.beat.agent_id: s for s in beats}, now=NOW, launch_grace_s=60.0,
                     heartbeat_timeout_s=30.0)


def test_an_unknown_machine_with_our_label_is_an_orphan_and_destroyed() -> None:
    out = run([], [listed("vf-orphan", provider_id="p-9")])
    assert [(t.provider_id, t.label) for t in out.terminate] == [("p-9", "vf-orphan")]
    assert "orphan" in out.terminate[0].reason and out.records == {}


def test_a_provider_error_changes_nothing_and_blocks_renting() -> None:
    out = run([rec("vf-a")], None)
    assert out.records == {"vf-a": rec("vf-a")} and not out.forget and not out.terminate
    assert not out.trusted and out.rent_blocked and out.alarms


def test_an_empty_list_while_agents_heartbeat_is_implausible() -> None:
    out = run([rec("vf-a")], [], [seen("vf-a")])
    assert not out.trusted and not out.forget and "implausibly empty" in (out.rent_blocked or "")


def test_an_empty_list_with_silent_agents_forgets_them() -> None:
    out = run([rec("vf-a")], [], [seen("vf-a", at=NOW - 300)])
    assert out.trusted and out.forget == ["vf-a"]


def test_a_launch_in_flight_is_kept_within_the_grace_then_forgotten() -> None:
    fresh = rec("vf-new", "launching", provider_id=None, first_beat=None, launched_at=NOW - 10)
    assert run([fresh], []).records == {"vf-new": fresh}
    stale = rec("vf-old", "launching", provider_id=None, first_beat=None, launched_at=NOW - 90)
    assert run([stale], []).forget == ["vf-old"]


def test_an_ambiguous_create_is_adopted_by_label() -> None:
    intent = rec("vf-x", "launching", provider_id=None, first_beat=None, agent_state=None)
    out = run([intent], [listed("vf-x", "starting", provider_id="p-5")])
    assert out.records["vf-x"].state == "booting" and out.records["vf-x"].provider_id == "p-5"
    assert not out.terminate


def test_failed_boot_is_destroyed_and_its_machine_avoided() -> None:
    booting = rec("vf-b", "booting", first_beat=None, agent_state=None)
    out = run([booting], [listed("vf-b", "failed", detail="OCI runtime create failed")])
    assert out.records["vf-b"].state == "destroying"
    assert out.terminate[0].avoid_machine == 7 and "OCI" in out.terminate[0].reason


def test_an_outbid_machine_is_destroyed_and_its_host_avoided_though_it_served() -> None:
    busy = rec("vf-a", agent_state="busy", job_id="j1")  # its job comes back via the lease
    out = run([busy], [structs.replace(listed("vf-a", "failed", detail="stopped"),
                                       interrupted=True)])
    [term] = out.terminate
    assert term.reason == "outbid: the provider stopped this interruptible machine"
    assert term.avoid_machine == 7 and out.records["vf-a"].state == "destroying"
    # A failure of a machine that served is not held against its host.
    out = run([busy], [listed("vf-a", "failed", detail="exited")])
    assert out.terminate[0].avoid_machine is None


def test_misconfigured_image_pauses_renting_with_an_alarm() -> None:
    booting = rec("vf-b", "booting", first_beat=None, agent_state=None)
    out = run([booting], [listed("vf-b", "misconfigured", detail="pull access denied for x")])
    assert out.misconfigured and "pull access denied" in out.misconfigured
    assert out.terminate and out.trusted


def test_a_destroying_machine_still_listed_is_terminated_again_then_forgotten() -> None:
    dying = rec("vf-d", "destroying")
    assert [t.label for t in run([dying], [listed("vf-d")]).terminate] == ["vf-d"]
    assert run([dying], []).forget == ["vf-d"]


def test_heartbeats_make_a_booting_machine_serving_and_track_idle_since() -> None:
    booting = rec("vf-b", "booting", first_beat=None, agent_state=None)
    out = run([booting], [listed("vf-b")], [seen("vf-b", "idle", at=NOW - 2)])
    r = out.records["vf-b"]
    assert (r.state, r.first_heartbeat_at, r.idle_since) == ("serving", NOW - 2, NOW - 2)
    busy = run([r], [listed("vf-b")], [seen("vf-b", "busy", job_id="j1")]).records["vf-b"]
    assert (busy.job_id, busy.idle_since) == ("j1", None)


def test_snapshot_marks_unconfirmed_drains_busy_and_restarts_as_heard() -> None:
    draining = rec("vf-d", "draining", agent_state="idle")
    confirmed = rec("vf-c", "draining", agent_state="draining")
    booting = rec("vf-b", "booting", first_beat=None, agent_state=None)
    by_id = {i.instance_id: i for i in snapshot_instances(
        {r.label: r for r in (draining, confirmed, booting)}, {}, heard_since=NOW - 5)}
    assert by_id["vf-d"].job_id == UNCONFIRMED_DRAIN  # the policy must not destroy it yet
    assert by_id["vf-c"].job_id is None and by_id["vf-c"].state == "draining"
    assert by_id["vf-b"].state == "booting" and by_id["vf-b"].last_heartbeat_at is None
    assert by_id["vf-d"].last_heartbeat_at == NOW - 5  # not heard since the restart
    stale = {"vf-c": seen("vf-c", "draining", at=NOW - 300)}  # heard before an outage
    again = snapshot_instances({"vf-c": confirmed}, stale, heard_since=NOW - 2)
    assert again[0].last_heartbeat_at == NOW - 2


def test_a_machine_holding_a_lease_is_busy_though_its_record_says_booting() -> None:
    """A controller SIGKILLed after its agent took a job but before the record's next write
    leaves the machine "booting" in KV. Found by a full run: the next controller's wait
    objective destroyed it as a spare booting machine, job and all (the job ran again)."""
    stale = rec("vf-b", "booting", first_beat=None, agent_state=None)
    [inst] = snapshot_instances({"vf-b": stale}, {}, heard_since=NOW - 5,
                                holds=lambda agent: ["j1"] if agent == "vf-b" else [])
    assert (inst.state, inst.job_id, inst.last_heartbeat_at) == ("busy", "j1", NOW - 5)
    policy = Policy(target_wait_s=120.0, hedge=1.0)
    snap = Snapshot(now=NOW, queued_jobs=0, running_jobs=1, backlog_work_s=60.0,
                    instances=(inst,))
    assert decide(snap, policy) == []  # neither destroyed nor drained
    [unheld] = snapshot_instances({"vf-b": stale}, {}, heard_since=NOW - 5,
                                  holds=lambda agent: [])
    assert unheld.state == "booting"


def test_spend_meter_accrues_resumes_and_rolls_over_at_utc_midnight() -> None:
    midnight = 1_800_057_600.0  # 2027-01-16 00:00 UTC
    meter = SpendMeter(now=midnight - 7200)
    assert meter.accrue(1.0, midnight - 3600) == 1.0
    resumed = SpendMeter(now=midnight - 3600, day=meter.day, spent=meter.spent)
    assert resumed.accrue(2.0, midnight + 1800) == 1.0  # only the half hour since midnight
    assert resumed.day == "2027-01-16"
    assert SpendMeter(now=midnight, day="2027-01-15", spent=9.0).spent == 0.0


def test_the_jobs_share_of_the_day_splits_leases_at_utc_midnight() -> None:
    midnight = 1_800_057_600.0  # 2027-01-16 00:00 UTC

    def lease(agent: str, granted_at: float) -> Lease:
        return Lease(agent_id=agent, tenant="t", operation="caption", job_id=agent,
                     attempt=1, stream_seq=1, ack_subject="x", granted_at=granted_at,
                     price_per_hour=3.6)  # $0.001 a second

    shares = Attribution(now=midnight - 100)
    shares.lease_ended(lease("a", midnight - 100), midnight - 40)  # 60 s yesterday
    shares.lease_ended(lease("b", midnight - 60), midnight + 30)  # only 30 s are today's
    assert shares.day == "2027-01-16" and shares.ended_today == pytest.approx(0.030)
    running = lease("c", midnight + 10)
    assert shares.today([running], midnight + 50) == pytest.approx(0.030 + 0.040)
    resumed = Attribution(now=midnight + 60, day="2027-01-16", ended=shares.ended_today)
    assert resumed.today([], midnight + 60) == pytest.approx(0.030)


def test_a_rented_machine_the_list_does_not_show_yet_is_kept_within_the_grace() -> None:
    just_rented = rec("vf-new", "booting", first_beat=None, agent_state=None,
                      launched_at=NOW - 10)
    assert run([just_rented], []).records == {"vf-new": just_rented}
    assert run([structs.replace(just_rented, launched_at=NOW - 90)], []).forget == ["vf-new"]


async def test_a_heartbeat_naming_another_agent_is_ignored(nc) -> None:  # type: ignore[no-untyped-def]
    book = HeartbeatBook(clock=lambda: NOW)
    await book.start(nc)
    forged = Heartbeat(agent_id="vf-victim", state="stopped", at=NOW, encoder="x")
    honest = Heartbeat(agent_id="vf-liar", state="idle", at=NOW, encoder="x")
    await nc.publish("agents.vf-liar.heartbeat", encode_heartbeat(forged))
    await nc.publish("agents.vf-liar.heartbeat", encode_heartbeat(honest))
    await nc.flush()
    async def honest_seen() -> None:  # it arrives after the forged one
        while "vf-liar" not in book.seen:
            await asyncio.sleep(0)

    await asyncio.wait_for(honest_seen(), 5)
    assert "vf-victim" not in book.seen
    await book.stop()


def test_a_local_agent_of_an_earlier_controller_is_left_to_finish_its_job() -> None:
    """The local provider lists only what this controller started: an unlisted agent that
    heartbeats is finishing a job for a controller that died. It is kept (draining), not
    forgotten (which revokes it mid-job), and does not block renting; it is forgotten once it
    has been silent for the heartbeat timeout."""
    old = rec("vf-old")
    out = reconcile({"vf-old": old}, [], {"vf-old": seen("vf-old", "draining", "j1")}, now=NOW,
                    launch_grace_s=60.0, heartbeat_timeout_s=30.0, lists_own_only=True,
                    listening_since=NOW - 5)
    assert out.trusted and out.rent_blocked is None and not out.forget
    assert out.records["vf-old"].state == "draining"
    # Not heard yet by a controller that just started: given the timeout to speak up.
    waiting = reconcile({"vf-old": old}, [], {}, now=NOW, launch_grace_s=60.0,
                        heartbeat_timeout_s=30.0, lists_own_only=True, listening_since=NOW - 5)
    assert not waiting.forget and waiting.records["vf-old"].state == "draining"
    gone = reconcile({"vf-old": old}, [], {"vf-old": seen("vf-old", at=NOW - 31)}, now=NOW,
                     launch_grace_s=60.0, heartbeat_timeout_s=30.0, lists_own_only=True,
                     listening_since=NOW - 60)
    assert gone.forget == ["vf-old"] and gone.records == {}
    # A provider that lists everything (Vast.ai) still reads "none listed while agents
    # heartbeat" as its own outage.
    assert run([old], [], [seen("vf-old")]).rent_blocked is not None
