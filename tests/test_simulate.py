"""The simulator: hand-checked figures on tiny traces, its faults, its baselines, its CLI."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from msgspec import structs

from controller.estimate import PRIOR_JOB_S, JobTimes
from controller.observe import Backlog, SpeedBook
from controller.policy import Offer, Policy, rank_offers
from controller.simulate import main, run_simulation
from controller.simulation.baselines import (
    cheapest_per_work_s,
    fixed_pool,
    lower_bound,
    one_per_request,
)
from controller.simulation.engine import simulate_policy
from controller.simulation.fleet import JobState, Machine, build_snapshot
from controller.simulation.provider import (
    Market,
    MarketOffer,
    ProviderModel,
    ScheduledFates,
    make_offers,
    storage_price_per_hour,
)
from controller.simulation.report import cost_gap, percentile
from controller.simulation.trace import TraceError, WorkModel, load_trace

POLICY = Policy(max_instances=3, max_price_per_hour=2.0, max_spend_per_day=20.0,
                target_drain_s=600.0, idle_timeout_s=300.0, boot_deadline_s=600.0,
                expected_boot_s=90.0)


# Storage while an image loads: 20 GB at 0.18 $/GB/month is 0.005 $/h, under any price here.
STORAGE_PER_HOUR = 0.005


def offers(*prices: float, gpu: str = "RTX 4090", speed: float = 1.0) -> tuple[MarketOffer, ...]:
    return tuple(MarketOffer(offer=Offer(offer_id=n, machine_id=100 + n, gpu_name=gpu,
                                         gpu_ram_mb=24000, price_per_hour=price,
                                         reliability=0.99, inet_down_mbps=500.0,
                                         cuda_max_good=12.4), speed=speed,
                             storage_per_hour=STORAGE_PER_HOUR)
                 for n, price in enumerate(prices, start=1))


def market(*prices: float) -> Market:
    return Market(offers(*prices), offer_away_s=1800.0)


def jobs(*pairs: tuple[float, float]) -> list[JobState]:
    """(arrival_s, work_s) each."""
    return [JobState(arrival_s=a, work_s=w) for a, w in pairs]


def test_one_job_scales_from_zero_runs_and_the_machine_goes_after_the_idle_timeout() -> None:
    out = simulate_policy(jobs((0.0, 16.0)), policy=POLICY, market=market(0.36),
                          fates=ScheduledFates(default_boot_s=60.0))
    # Rented on the tick at 0, heartbeats at 60 and pulls the job at once, idle from 76;
    # drained on the first tick 300 s later (380), destroyed on the next (385).
    assert out.waits_s == (60.0,)
    assert (out.machines, out.busy_s, out.billed_s, out.booting_s) == (1, 16.0, 385.0, 60.0)
    assert (out.drained_at, out.fleet_empty_at, out.unfinished_jobs) == (76.0, 385.0, 0)
    # Vast.ai bills storage alone while the image loads (60 s at 0.005 $/h), then the full
    # 0.36 $/h for the 325 s up: 16 s busy, 309 s idle or draining.
    assert out.boot_cost == pytest.approx(60 * 0.005 / 3600)  # 0.0000833 $
    assert out.busy_cost == pytest.approx(16 * 0.36 / 3600)  # 0.0016 $
    assert out.idle_cost == pytest.approx(309 * 0.36 / 3600)  # 0.0309 $
    assert out.cost == pytest.approx(0.0325833, abs=1e-7)  # (0.3 + 117) / 3600
    # The controller's meter, and so the caps, count the full price from the rent: 385 s.
    assert out.ticks[0].rate_per_hour == 0.36  # still booting, the policy sees all of it
    assert out.metered_cost == pytest.approx(0.0385)
    assert out.max_day_spend == pytest.approx(0.0385)


def test_two_slots_share_one_machine_as_the_agent_runs_them() -> None:
    """Processor sharing: two jobs of 100 s each alone, on one machine whose two slots
    together go 1.5 times as fast, take 100 x 2 / 1.5 = 133.3 s each when they run side by
    side; the third, alone afterwards, its 100 s. The policy counts the slots: one machine
    for three jobs when the queue fits its slots (max_instances 1 only caps it)."""
    policy = structs.replace(POLICY, max_instances=1, slots=2)
    three = jobs((0.0, 100.0), (0.0, 100.0), (1.0, 100.0))
    out = simulate_policy(three, policy=policy, market=market(0.36),
                          fates=ScheduledFates(default_boot_s=60.0), slot_gain=1.5)
    assert out.machines == 1
    assert [j.started_at for j in three] == [60.0, 60.0, pytest.approx(60 + 400 / 3)]
    assert [j.done_at for j in three] == [pytest.approx(60 + 400 / 3)] * 2 + [
        pytest.approx(60 + 400 / 3 + 100)]
    assert out.busy_s == pytest.approx(400 / 3 + 100)  # the machine was busy that long
    assert out.work_done_s == pytest.approx(300.0)  # and did the three jobs' work
    alone = simulate_policy(jobs((0.0, 100.0)), policy=policy, market=market(0.36),
                            fates=ScheduledFates(default_boot_s=60.0), slot_gain=1.5)
    assert alone.busy_s == pytest.approx(100.0)  # one job alone is not slowed


def test_a_dead_agent_hands_back_every_job_it_ran() -> None:
    """Both of a two-slot machine's jobs come back when its agent dies under them."""
    policy = structs.replace(POLICY, max_instances=2, slots=2)
    two = jobs((0.0, 100.0), (0.0, 100.0))
    out = simulate_policy(two, policy=policy, market=market(0.36, 0.36),
                          fates=ScheduledFates(default_boot_s=60.0, deaths={(0, 0): 0.5}))
    assert out.unfinished_jobs == 0
    assert all(j.done_at is not None and j.done_at > 60 + 100 for j in two)
    assert out.machines == 2  # the dead one replaced


def test_caps_hold_under_a_burst() -> None:
    burst = jobs(*[(float(n), 300.0) for n in range(40)])
    policy = Policy(max_instances=3, max_price_per_hour=1.0, target_drain_s=60.0,
                    idle_timeout_s=30.0)
    out = simulate_policy(burst, policy=policy, market=market(*[0.3] * 10),
                          fates=ScheduledFates())
    assert max(t.instances for t in out.ticks) == 3  # 3 x 0.3 $/h fits under 1.0, a 4th not
    assert max(t.rate_per_hour for t in out.ticks) == pytest.approx(0.9)
    assert out.unfinished_jobs == 0 and out.fleet_empty_at is not None


def test_a_machine_that_never_boots_is_destroyed_avoided_and_replaced() -> None:
    out = simulate_policy(jobs((0.0, 10.0)), policy=POLICY, market=market(0.1, 0.2),
                          fates=ScheduledFates(boot_s=(None,), default_boot_s=50.0))
    # Launch 0 (machine 101) is silent until the deadline tick after 600 s (605); then the
    # other machine is rented (101 is avoided), boots in 50 s and runs the job.
    assert out.machines == 2
    assert out.waits_s == (655.0,)
    assert out.booting_s == 605.0 + 50.0
    # 101 bills storage only, for the 605 s it existed; 102 storage for its 50 s boot, then
    # 0.2 $/h from 655 until it goes at 970 (job done at 665, idle 300 s, drained, destroyed).
    assert out.boot_cost == pytest.approx((605 + 50) * 0.005 / 3600)
    assert out.cost == pytest.approx(0.0184097, abs=1e-7)  # (3.275 + 315 * 0.2) / 3600


def test_a_lost_offer_is_retried_after_the_cooldown() -> None:
    out = simulate_policy(jobs((0.0, 10.0)), policy=POLICY, market=market(0.1, 0.2),
                          fates=ScheduledFates(failed_rents=frozenset({0})))
    # The rent at 0 finds its offer gone (NoCapacity); the next one, after the 20 s
    # cooldown, rents the other offer, which boots in 60 s.
    assert (out.rent_failures, out.machines, out.waits_s) == (1, 1, (80.0,))


def test_a_tick_whose_instance_list_fails_does_nothing() -> None:
    out = simulate_policy(jobs((0.0, 10.0)), policy=POLICY, market=market(0.1),
                          fates=ScheduledFates(failed_lists=frozenset({0, 1})))
    assert [t.acted for t in out.ticks[:3]] == [False, False, True]
    assert out.waits_s == (70.0,)  # rented on the third tick, at 10 s


def test_a_job_whose_agent_dies_is_redelivered_and_the_silent_machine_destroyed() -> None:
    out = simulate_policy(jobs((0.0, 100.0)), policy=POLICY, market=market(0.1, 0.2),
                          fates=ScheduledFates(deaths={(0, 0): 0.5}))
    # Launch 0 boots at 60 and dies at 110 with the job half done; its job is redelivered at
    # 140 (ack wait 30 s). It is silent for over 30 s on the tick at 145: destroyed, not
    # avoided. The backlog rents launch 1 on that tick; it boots at 205 and runs the job.
    assert out.machines == 2 and out.unfinished_jobs == 0
    assert out.waits_s == (60.0,)  # the wait ends at the first start
    assert out.busy_s == 50.0 + 100.0
    assert out.drained_at == 305.0


def test_the_gap_to_the_lower_bound_is_boot_idle_price_ladder_and_lost_work() -> None:
    out = simulate_policy(jobs((0.0, 100.0)), policy=POLICY, market=market(0.1, 0.2),
                          fates=ScheduledFates(deaths={(0, 0): 0.5}))
    gap = cost_gap(out, work_s=100.0,
                   per_work_s=cheapest_per_work_s(POLICY, offers(0.1, 0.2)) or 0.0)
    # As in the death test: launch 0 (0.1 $/h) is up 60-145, busy 50 s; launch 1 (0.2 $/h)
    # is up 205-610, busy 100 s. In dollars x 3600:
    assert gap.bound * 3600 == pytest.approx(100 * 0.1)  # the work at the cheapest price
    assert gap.boot * 3600 == pytest.approx((60 + 60) * 0.005)  # storage while loading
    assert gap.idle * 3600 == pytest.approx(35 * 0.1 + 305 * 0.2)  # up, no job
    assert gap.ladder * 3600 == pytest.approx(100 * (0.2 - 0.1))  # the job ran on the dearer
    assert gap.lost * 3600 == pytest.approx(50 * 0.1)  # half the job, done twice
    assert gap.bound + gap.boot + gap.idle + gap.ladder + gap.lost == pytest.approx(out.cost)


def test_the_day_budget_stops_the_fleet() -> None:
    policy = Policy(max_instances=2, max_price_per_hour=10.0, max_spend_per_day=1.2,
                    target_drain_s=60.0, budget_reserve_s=900.0)
    out = simulate_policy(jobs(*[(0.0, 400.0)] * 30), policy=policy, market=market(1.0, 1.0),
                          fates=ScheduledFates(), horizon_s=3 * 3600)
    assert out.max_day_spend <= 1.2
    assert out.unfinished_jobs > 0  # it stopped with work left: the budget wins
    assert out.ticks[-1].instances == 0


def test_baselines_on_two_jobs() -> None:
    two = [(0.0, 16.0), (10.0, 26.0)]
    old = one_per_request(jobs(*two), policy=POLICY, market=market(0.36, 0.72),
                          fates=ScheduledFates(default_boot_s=60.0))
    # Each job rents the cheapest offer listed when it arrives: the second finds the first
    # taken. Each machine lives boot + work: storage for the boot, the full price for the work.
    assert old.cost == pytest.approx(0.0069667, abs=1e-7)  # (0.3 + 5.76 + 0.3 + 18.72) / 3600
    assert (old.wait_p50_s, old.wait_p95_s, old.machines) == (60.0, 60.0, 2)
    assert old.utilisation == pytest.approx(42 / 162)

    silent = one_per_request(jobs((0.0, 16.0)), policy=POLICY, market=market(0.36, 0.72),
                             fates=ScheduledFates(boot_s=(None,), default_boot_s=60.0))
    # The first machine never comes up: storage alone until the 600 s deadline destroys it;
    # the second (the first is avoided) loads 60 s and runs the job at 0.72 $/h.
    assert silent.cost == pytest.approx(0.0041167, abs=1e-7)  # (3 + 0.3 + 11.52) / 3600
    assert (silent.wait_p95_s, silent.machines) == (660.0, 2)

    pool = fixed_pool(jobs(*two), size=1, policy=POLICY, market=market(0.36, 0.72))
    # One always-on machine: job 2 waits for job 1 (done at 16); billed until 42.
    assert pool.cost == pytest.approx(42 * 0.36 / 3600)
    assert (pool.wait_p50_s, pool.machines, pool.utilisation) == (3.0, 1, 1.0)

    bound = lower_bound(jobs(*two), policy=POLICY, offers=offers(0.36, 0.72))
    assert bound.cost == pytest.approx(42 * 0.36 / 3600) and bound.wait_p95_s == 0.0


def test_offers_bill_a_little_storage_while_loading() -> None:
    assert storage_price_per_hour(0.15, 20.0) == pytest.approx(0.15 * 20 / 720)  # 0.0042 $/h
    market_offers = make_offers(ProviderModel(), seed=0)
    storage = sorted(m.storage_per_hour for m in market_offers)
    assert 0.002 < storage[len(storage) // 2] < 0.006  # around 0.15 $/GB/month x 20 GB
    assert all(0 < m.storage_per_hour < m.offer.price_per_hour / 5 for m in market_offers)


def test_percentile() -> None:
    assert percentile([], 95) == 0.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "message"), [
    ("time,op,media\n", "line 1: expected the header"),
    ("arrival_s,operation,media_s\n1,transcode,3\n", "line 2: unknown operation 'transcode'"),
    ("arrival_s,operation,media_s\n1,caption,3\n-1,caption,3\n", "line 3: arrival_s and"),
    ("arrival_s,operation,media_s\n1,caption\n", "line 2: expected 3 fields"),
    ("arrival_s,operation,media_s\nsoon,caption,3\n", "line 2: arrival_s and media_s must"),
])
def test_bad_traces_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(TraceError, match=message):
        load_trace(write(tmp_path / "t.csv", text))


def test_trace_loads_in_arrival_order_with_work(tmp_path: Path) -> None:
    trace = load_trace(write(tmp_path / "t.csv", "arrival_s,operation,media_s\n"
                             "9,add_audio,20\n2.5,caption,40\n"))
    assert [(j.job_id, j.arrival_s) for j in trace] == [("j2", 2.5), ("j1", 9.0)]
    assert WorkModel().work_s(trace[0]) == 6.0 + 40 * 0.25


QUIET = ProviderModel(offers=20, boot_sigma=0.0, slow_pull_p=0.0, boot_failure_p=0.0,
                      stuck_loading_p=0.0, rent_fail_p=0.0, list_error_p=0.0,
                      agent_death_per_hour=0.0)


def test_run_simulation_on_a_one_job_csv(tmp_path: Path) -> None:
    trace = write(tmp_path / "one.csv", "arrival_s,operation,media_s\n0,caption,40\n")
    report = run_simulation(trace, policy=POLICY, model=QUIET, seed=3)
    ours, old, pool, bound = report.results
    by_id = {m.offer.offer_id: m for m in make_offers(QUIET, 3)}
    best = by_id[rank_offers(tuple(m.offer for m in by_id.values()), POLICY)[0].offer_id]
    run_s = 16.0 / best.speed
    # Boot is exactly 90 s (storage only); idle from 90 + run_s, drained 300 s later on a
    # tick, then gone.
    lifetime_s = math.ceil((90 + run_s + 300) / 5) * 5 + 5
    boot_cost = 90 * best.storage_per_hour / 3600
    assert ours.wait_p95_s == 90.0 and ours.machines == 1
    assert ours.cost == pytest.approx(boot_cost
                                      + (lifetime_s - 90) * best.offer.price_per_hour / 3600)
    assert old.cost == pytest.approx(boot_cost + run_s * best.offer.price_per_hour / 3600)
    assert pool.machines == 1 and bound.cost < old.cost < ours.cost  # one job: idle costs
    assert report.jobs == 1 and report.work_s == 16.0


def test_cli_prints_every_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = write(tmp_path / "t.csv", "arrival_s,operation,media_s\n0,caption,40\n"
                  "5,img2vid,10\n7,add_audio,60\n")
    assert main(["--trace", str(trace), "--max-instances", "2", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    for name in ("ours", "one GPU per request", "fixed pool of", "lower bound", "p95 wait"):
        assert name in out
    assert main(["--trace", str(tmp_path / "missing.csv")]) == 2


def test_same_seed_same_figures(tmp_path: Path) -> None:
    trace = write(tmp_path / "t.csv", "arrival_s,operation,media_s\n"
                  + "".join(f"{n * 7},caption,{30 + n}\n" for n in range(30)))
    assert run_simulation(trace, policy=POLICY, seed=5) == run_simulation(trace, policy=POLICY,
                                                                          seed=5)


def test_the_simulators_cap_has_the_controllers_name(tmp_path: Path) -> None:
    """``--max-spend-per-hour`` in ``controller run`` and here alike (the old name still
    works)."""
    trace = write(tmp_path / "t.csv", "arrival_s,operation,media_s\n0,caption,40\n")
    for flag in ("--max-spend-per-hour", "--max-price-per-hour"):
        assert main(["--trace", str(trace), flag, "5"]) == 0
    with pytest.raises(SystemExit):
        main(["--trace", str(trace), "--max-spend-per-hour", "lots"])


def test_the_simulator_sees_the_backlog_as_the_controller_does() -> None:
    """The policy gets the same estimate from both: the finished jobs' mean machine time,
    never a job's true work (a simulator that knew it would flatter the policy)."""
    book = SpeedBook(lambda _: None)
    times = JobTimes()
    for seconds in (30.0, 50.0, 40.0):
        book.times.learn("caption", seconds)
        times.learn("caption", seconds)
    live = book.work_s(Backlog(queued_jobs=4, running_jobs=3), running_for_s=[10.0, 90.0])
    running = Machine(launch=0, machine_id=1, gpu_name="RTX 4090", price_per_hour=0.3,
                      storage_per_hour=0.0, speed=1.0, launched_at=0.0, booted_at=5.0,
                      work_left={0: 5000.0}, job_started={0: 990.0})  # truly 5000 s
    long = dataclasses.replace(running, launch=1, job_started={0: 910.0})
    dead = dataclasses.replace(running, launch=2, dead_at=950.0)
    snapshot = build_snapshot(now=1000.0, queued=4, mean_job_s=times.mean(),
                              running=[(running, 990.0), (long, 910.0), (dead, 990.0)],
                              machines=[], offers=(),
                              spent_today=0.0, failed_machines=frozenset(),
                              last_rent_at=None, gpu_speed={})
    assert snapshot.backlog_work_s == pytest.approx(live)
    mean = 0.8 * (0.8 * 30 + 0.2 * 50) + 0.2 * 40  # the moving average, newest at 0.2
    # queued at the mean, the 10 s one at what is left, the 90 s one at as long again, the
    # dead agent's job at half the mean
    assert live == pytest.approx(4 * mean + (mean - 10) + 90 + 0.5 * mean)
    # Before any job has finished, the prior, whatever the queue truly holds.
    assert build_snapshot(now=0.0, queued=3, mean_job_s=JobTimes().mean(), running=[],
                          machines=[], offers=(), spent_today=0.0,
                          failed_machines=frozenset(), last_rent_at=None,
                          gpu_speed={}).backlog_work_s == 3 * PRIOR_JOB_S
