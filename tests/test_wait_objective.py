"""The wait objective, the hedge and the warm floor (controller/sizing.py) as tables of decide(),
and the arrival rate that sizes the floor (controller/estimate.py)."""

from __future__ import annotations

import pytest
from msgspec import structs

from controller.estimate import ArrivalRate, BootTimes, late_share
from controller.policy import Destroy, Drain, Policy, Snapshot, Unmet, decide, wants_offers
from controller.sizing import warm_note
from tests.test_policy import NOW, inst, offer, rents, snap

# A job takes 60 s, a boot 90 s, and every queued job should start within 120 s: a machine
# rented now starts one queued job in time ((120 - 90) // 60 + 1), an idle one starts three.
WAIT = Policy(max_instances=6, max_price_per_hour=5.0, max_spend_per_day=50.0,
              target_wait_s=120.0, expected_boot_s=90.0, rent_cooldown_s=0.0)
OFFERS = tuple(offer(n) for n in range(1, 9))


def wait_snap(**kw: object) -> Snapshot:
    values: dict[str, object] = {"offers": OFFERS, "mean_job_s": 60.0}
    values.update(kw)
    return snap(**values)  # type: ignore[arg-type]


def test_each_queued_job_no_machine_can_start_in_time_gets_one() -> None:
    assert len(rents(decide(wait_snap(queued=4), WAIT))) == 4


def test_a_running_job_without_a_machine_gets_one() -> None:
    """Found by a full run: a job waiting out its retry's backoff is neither queued nor on a
    machine, the fleet drained to nothing, and nothing ever ran it again."""
    assert len(rents(decide(wait_snap(running=1), WAIT))) == 1
    busy = (inst("b", "busy", job="j1"),)
    assert rents(decide(wait_snap(running=1, instances=busy), WAIT)) == []
    idle = (inst("i", idle_for_s=900),)  # past the timeout, but the job will need it
    assert decide(wait_snap(running=1, instances=idle), WAIT) == []


def test_machines_free_soon_start_the_queue_and_nothing_is_rented() -> None:
    idle = inst("i", idle_for_s=5)
    assert rents(decide(wait_snap(queued=3, instances=(idle,)), WAIT)) == []
    # A fourth job would wait past 120 s behind the idle machine's three: one more machine.
    assert len(rents(decide(wait_snap(queued=4, instances=(idle,)), WAIT))) == 1
    # Short jobs: two busy machines, each free in 10 s, start six jobs of 20 s each in time.
    busy = (inst("b1", "busy", job="j1"), inst("b2", "busy", job="j2"))
    assert rents(decide(wait_snap(queued=12, running=2, mean_job_s=20.0, instances=busy),
                        WAIT)) == []


def test_the_hedge_rents_two_per_machine_needed_and_destroys_the_spare_when_one_is_up() -> None:
    hedged = structs.replace(WAIT, hedge=1.0)
    assert len(rents(decide(wait_snap(queued=1), hedged))) == 2
    both = (inst("a", "booting", beat_age_s=None, age_s=30),
            inst("b", "booting", beat_age_s=None, age_s=30))
    assert decide(wait_snap(queued=1, instances=both), hedged) == []  # waiting on the pair
    # "a" booted first and took the job: "b" bills only storage so far and nothing needs it.
    up = (inst("a", "busy", job="j1", age_s=60), inst("b", "booting", beat_age_s=None, age_s=60))
    assert decide(wait_snap(running=1, instances=up), hedged) == [
        Destroy(instance_id="b", reason="booting, and no job needs it now")]


def test_a_burst_gets_more_spares_than_a_job_alone() -> None:
    """The k-th job of a burst waits for the k-th fastest boot: with one spare each that is
    about the median boot. ``burst_hedge`` 2 rents three more per machine while five or more
    are needed at once; below five, the hedge alone. Booting machines count toward five."""
    many = tuple(offer(n) for n in range(1, 41))
    burst = structs.replace(WAIT, hedge=1.0, burst_hedge=2.0, max_instances=40,
                            max_price_per_hour=50.0)
    assert len(rents(decide(wait_snap(queued=4, offers=many), burst))) == 8
    assert len(rents(decide(wait_snap(queued=5, offers=many), burst))) == 20
    booting = tuple(inst(f"b{n}", "booting", beat_age_s=None, age_s=10) for n in range(4))
    # Four booting (each starts one job in time) and two more jobs: six waited for, 24 wanted.
    assert len(rents(decide(wait_snap(queued=6, instances=booting, offers=many), burst))) == 20


def test_an_overdue_boot_is_hedged_against_and_kept_as_the_spare() -> None:
    slow = inst("slow", "booting", beat_age_s=None, age_s=200)  # past 90 s: a slow pull, likely
    # No hedge: a fresh rent is expected sooner than the slow host; the slow one goes.
    actions = decide(wait_snap(queued=1, instances=(slow,)), WAIT)
    assert len(rents(actions)) == 1
    assert [a.instance_id for a in actions if isinstance(a, Destroy)] == ["slow"]
    # With the hedge, the slow one is the spare: a fresh rent, and it stays.
    actions = decide(wait_snap(queued=1, instances=(slow,)), structs.replace(WAIT, hedge=1.0))
    assert len(rents(actions)) == 1 and not [a for a in actions if isinstance(a, Destroy)]


def test_a_restarted_controller_hears_a_booting_machine_out_before_calling_it_spare() -> None:
    """Its record says "booting" (written before the agent's first heartbeat), but the agent
    may be up and idle: for a heartbeat timeout after the controller starts listening it is
    not destroyed as a spare; once that has passed unheard, it is."""
    unheard = (inst("m", "booting", beat_age_s=None, age_s=200),)
    just_started = wait_snap(instances=unheard, heard_since=NOW - 2.0)
    assert decide(just_started, WAIT) == []
    heard_long_enough = wait_snap(instances=unheard, heard_since=NOW - WAIT.heartbeat_timeout_s)
    assert decide(heard_long_enough, WAIT) == [
        Destroy(instance_id="m", reason="booting, and no job needs it now")]
    # One rented after the restart is this controller's own: spare at once.
    own = (inst("n", "booting", beat_age_s=None, age_s=1.0),)
    assert decide(wait_snap(instances=own, heard_since=NOW - 2.0), WAIT) == [
        Destroy(instance_id="n", reason="booting, and no job needs it now")]


def test_a_booting_machine_the_warm_floor_wants_is_kept() -> None:
    """Found by the controller test: min_warm rented one, the next tick destroyed it as a
    spare, and so on every tick."""
    warm = structs.replace(WAIT, min_warm=1)
    booting = inst("w", "booting", beat_age_s=None, age_s=10)
    assert decide(wait_snap(instances=(booting,)), warm) == []
    assert decide(wait_snap(instances=(inst("w", idle_for_s=900),)), warm) == []  # not drained


def test_the_floor_follows_the_measured_load() -> None:
    by_load = structs.replace(WAIT, warm_per_load=1.0)
    # 3 jobs a minute of 60 s each: 3 machines' worth of load, kept up with no job queued.
    assert len(rents(decide(wait_snap(arrivals_per_s=0.05), by_load))) == 3
    idle = tuple(inst(f"i{n}", idle_for_s=900) for n in range(4))
    # With the load gone, idle machines drain past the idle timeout; with it, three stay.
    assert len([a for a in decide(wait_snap(instances=idle), by_load)
                if isinstance(a, Drain)]) == 4
    assert [a for a in decide(wait_snap(instances=idle, arrivals_per_s=0.05), by_load)] == [
        Drain(instance_id="i0")]


def test_a_target_below_a_boot_keeps_machines_up_for_the_jobs_to_come() -> None:
    """Every job should start within 30 s and a boot takes 90: only a machine already up
    can do it. 4 jobs a minute of 60 s each are 4 machines' worth of load; square-root
    staffing keeps 4 + 2 up, idle or not, with nothing queued. At 120 s a rent is in time,
    and nothing is kept; two slots a machine halve the load in machines (2 + 1.41: 4)."""
    quick = structs.replace(WAIT, target_wait_s=30.0, max_instances=8)
    assert len(rents(decide(wait_snap(arrivals_per_s=4 / 60), quick))) == 6
    assert rents(decide(wait_snap(arrivals_per_s=4 / 60), WAIT)) == []
    two = structs.replace(quick, slots=2)
    assert len(rents(decide(wait_snap(arrivals_per_s=4 / 60), two))) == 4
    idle = tuple(inst(f"i{n}", idle_for_s=900) for n in range(7))
    assert [a for a in decide(wait_snap(instances=idle, arrivals_per_s=4 / 60), quick)] == [
        Drain(instance_id="i0")]  # the seventh is not needed
    assert rents(decide(wait_snap(), quick)) == []  # no arrivals seen: nothing kept
    assert rents(decide(wait_snap(arrivals_per_s=4 / 60),
                        structs.replace(quick, warm_below_boot=False))) == []
    # What vidfleet status adds to the objective: the pool and why (no boot measured yet:
    # the expected 90 s is late for 30 s every time).
    assert warm_note(wait_snap(arrivals_per_s=4 / 60), quick) == (
        ", 6 machines kept up for it (a rent, hedged, comes up later 100% of the time)")
    assert warm_note(wait_snap(arrivals_per_s=4 / 60), WAIT) == ""


def test_the_pool_follows_the_share_of_late_boots_not_their_median() -> None:
    """Every job should start within 100 s, and the measured boots' median is 123 s. With
    the hedge the first of two machines is late only if both are: 0.7 squared, 0.49 of the
    time, under the 0.6 that calls for a pool, so nothing is kept warm. Unhedged, a rent is
    late 0.7 of the time: the pool. A median-against-target trigger switched the pool on and
    off as the median wandered across the default target (bench/simulate.py: the goals met
    fell from 10 of 15 to 2)."""
    seen = BootTimes(keep=20, least=3)
    for seconds in range(60, 200, 7):  # 20 boots, 60 to 193 s
        seen.add(float(seconds))
    assert seen.expected() == 123.0
    assert late_share(seen.seen(), 100.0) == pytest.approx(0.7)
    load = {"arrivals_per_s": 4 / 60, "boots": seen.seen(), "boot_s": seen.expected()}
    hedged = structs.replace(WAIT, target_wait_s=100.0, hedge=1.0, max_instances=8)
    assert rents(decide(wait_snap(**load), hedged)) == []
    assert len(rents(decide(wait_snap(**load), structs.replace(hedged, hedge=0.0)))) == 6
    assert warm_note(wait_snap(**load), structs.replace(hedged, hedge=0.0)).endswith(
        "comes up later 70% of the time)")
    # A machine destroyed while booting took at least as long: censored, not on time.
    censored = BootTimes(keep=10, least=3)
    for _ in range(3):
        censored.add(50.0)
        censored.censored(50.0)
    assert late_share(censored.seen(), 40.0) == 1.0
    assert late_share(censored.seen(), 60.0) == 0.5  # the rest is unknown: still booting
    assert late_share(BootTimes().seen(), 60.0) is None  # nothing measured


def test_what_the_caps_prevent_is_reported() -> None:
    capped = structs.replace(WAIT, max_instances=2)
    actions = decide(wait_snap(queued=5), capped)
    assert len(rents(actions)) == 2
    assert Unmet(machines=3, reason="max_instances (2) caps the fleet (every queued job "
                                    "started within 120 s needs more machines)") in actions
    # The hourly cap: 0.3 $/h offers under a 0.7 $/h cap rent two of the five needed.
    by_price = structs.replace(WAIT, max_price_per_hour=0.7)
    actions = decide(wait_snap(queued=5), by_price)
    assert len(rents(actions)) == 2
    (unmet,) = [a for a in actions if isinstance(a, Unmet)]
    assert unmet.machines == 3 and unmet.reason.startswith("the hourly spend cap ($0.70/h)")
    assert next(a for a in decide(wait_snap(queued=1, offers=()), WAIT)
            if isinstance(a, Unmet)).reason.startswith("no offer meets the requirements")
    assert not [a for a in decide(wait_snap(queued=2), WAIT) if isinstance(a, Unmet)]


def test_offers_are_searched_only_when_a_rent_would_follow() -> None:
    assert wants_offers(wait_snap(queued=1, offers=()), WAIT)
    assert not wants_offers(wait_snap(queued=3, offers=(), instances=(inst("i"),)), WAIT)
    assert not wants_offers(wait_snap(offers=()), WAIT)


def test_the_arrival_rate_is_a_median_over_minutes() -> None:
    steady, batch = ArrivalRate(window_s=600), ArrivalRate(window_s=600)
    steady.observe(NOW, 0)
    batch.observe(NOW, 0)
    for minute in range(1, 11):  # two jobs a minute for ten minutes, read every 5 s
        for tick in range(12):
            steady.observe(NOW + minute * 60 + tick * 5, 2 * minute)
    batch.observe(NOW + 65, 500)  # 500 jobs in one minute, then none
    for second in range(70, 660, 5):
        batch.observe(NOW + second, 500)
    assert steady.per_s() == 2 / 60
    assert batch.per_s() == 0.0


def test_measured_boots_replace_the_configured_one() -> None:
    """Three jobs queued (a minute each), a machine booting for 30 s. Configured at 90 s,
    it is up in 60 s and starts two of them within 120 s: one more machine. Measured boots
    of 200 s put it 170 s away, one job's worth, and a new machine a job each: two more.
    Measured boots of 20 s make it overdue, a slow host: replaced, and the three jobs get
    two fresh machines (each up in 20 s starts two)."""
    booting = (inst("b", "booting", beat_age_s=None, age_s=30),)
    assert len(rents(decide(wait_snap(queued=3, instances=booting), WAIT))) == 1
    assert len(rents(decide(wait_snap(queued=3, instances=booting, boot_s=200.0), WAIT))) == 2
    quick = decide(wait_snap(queued=3, instances=booting, boot_s=20.0), WAIT)
    assert len(rents(quick)) == 2 and [a.instance_id for a in quick
                                        if isinstance(a, Destroy)] == ["b"]
    boots = BootTimes(keep=10, least=3)
    boots.add(80.0)
    boots.add(100.0)
    assert boots.expected() is None  # too few to go by
    for seconds in (95.0, 600.0, 90.0):  # one slow host moves the median little
        boots.add(seconds)
    assert boots.expected() == 95.0
    # Hedged pairs: the faster of each came up in 60 s, the other was destroyed booting then.
    # Counting only the ones that came up would expect 60 s; a spare destroyed at 60 s took
    # longer than that, and the median moves up past them.
    hedged = BootTimes(keep=10, least=3)
    for _ in range(3):
        hedged.add(60.0)
        hedged.censored(60.0)
    assert hedged.expected() == 60.0  # half came up by 60 s, the rest is unknown: at least
    hedged.add(120.0)
    hedged.add(130.0)
    assert hedged.expected() == 120.0


def test_machines_with_several_slots_count_each_one() -> None:
    """Two jobs per machine: a busy machine's free slot takes a queued job now, and a rent
    covers twice the queue."""
    two = structs.replace(WAIT, slots=2)
    half_busy = (inst("b", "busy", job="j1"),)  # one job in hand: one slot free
    # One slot: free in 30 s, it starts two of three in time. Two: the free one starts three.
    assert len(rents(decide(wait_snap(queued=3, running=1, instances=half_busy), WAIT))) == 1
    assert rents(decide(wait_snap(queued=3, running=1, instances=half_busy), two)) == []
    full = (structs.replace(half_busy[0], jobs=2),)
    # Both slots busy, each free in 30 s: four queued jobs start within 120 s there.
    assert rents(decide(wait_snap(queued=4, running=2, instances=full), two)) == []
    assert len(rents(decide(wait_snap(queued=6, running=2, instances=full), two))) == 1
    assert len(rents(decide(wait_snap(queued=4), WAIT))) == 4
    assert len(rents(decide(wait_snap(queued=4), two))) == 2
    drain = structs.replace(two, target_wait_s=0.0, target_drain_s=60.0)
    assert len(rents(decide(wait_snap(queued=3, work_s=3000.0), drain))) == 2  # 3 jobs, 2 each
