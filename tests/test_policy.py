"""decide() as a table: scaling from zero, caps, boot and idle timeouts, never a busy kill."""

from __future__ import annotations

import pytest

from controller.observe import Backlog, SpeedBook
from controller.policy import (
    Destroy,
    Drain,
    Instance,
    Offer,
    Policy,
    Rent,
    Snapshot,
    decide,
    has_nvenc,
    rank_offers,
)

NOW = 10_000.0
POLICY = Policy(max_instances=3, max_price_per_hour=2.0, max_spend_per_day=20.0,
                max_offer_price_per_hour=0.9)


def offer(oid: int, price: float = 0.3, gpu: str = "RTX 4090", machine: int | None = None,
          **kw: object) -> Offer:
    values: dict[str, object] = dict(offer_id=oid, machine_id=machine or oid * 10,
                                     gpu_name=gpu, gpu_ram_mb=24000, price_per_hour=price,
                                     reliability=0.99, inet_down_mbps=500.0,
                                     cuda_max_good=12.4)
    values.update(kw)
    return Offer(**values)  # type: ignore[arg-type]


def inst(iid: str, state: str = "idle", *, beat_age_s: float | None = 1.0,
         idle_for_s: float | None = None, job: str | None = None, age_s: float = 900.0,
         price: float = 0.3, machine: int = 1) -> Instance:
    return Instance(instance_id=iid, machine_id=machine, price_per_hour=price,
                    state=state,  # type: ignore[arg-type]
                    launched_at=NOW - age_s,
                    last_heartbeat_at=None if beat_age_s is None else NOW - beat_age_s,
                    idle_since=None if idle_for_s is None else NOW - idle_for_s, job_id=job)


def snap(queued: int = 0, running: int = 0, work_s: float = 0.0, instances: tuple = (),
         offers: tuple = (offer(1), offer(2), offer(3), offer(4)), **kw: object) -> Snapshot:
    return Snapshot(now=NOW, queued_jobs=queued, running_jobs=running,
                    backlog_work_s=work_s, instances=instances, offers=offers,
                    **kw)  # type: ignore[arg-type]


def rents(actions: list) -> list[Rent]:
    return [a for a in actions if isinstance(a, Rent)]


@pytest.mark.parametrize(("name", "snapshot", "expected_rents"), [
    ("idle stays at zero", snap(), 0),
    ("one job, one machine", snap(queued=1, work_s=60), 1),
    ("backlog drains within the target", snap(queued=10, work_s=1500), 3),  # ceil(1500/600)
    ("never more machines than jobs", snap(queued=2, work_s=5000), 2),
    ("capped at max_instances", snap(queued=50, work_s=99_999), 3),
    ("booting machines count as capacity",
     snap(queued=2, work_s=100, instances=(inst("b", "booting", beat_age_s=None, age_s=30),)),
     0),
    ("cooldown after a rent", snap(queued=1, work_s=60, last_rent_at=NOW - 5), 0),
])
def test_scale_up(name: str, snapshot: Snapshot, expected_rents: int) -> None:
    assert len(rents(decide(snapshot, POLICY))) == expected_rents, name


def test_warm_floor() -> None:
    assert len(rents(decide(snap(), Policy(min_warm=1)))) == 1


def test_price_caps_hold() -> None:
    busy = tuple(inst(f"i{n}", "busy", job=f"j{n}", price=0.8) for n in range(2))
    # Fleet at 1.6 $/h; a 0.5 $/h offer would break the 2.0 $/h cap, a 0.3 one fits.
    got = rents(decide(snap(queued=5, work_s=9999, instances=busy,
                            offers=(offer(1, 0.5), offer(2, 0.3))), POLICY))
    assert [r.offer_id for r in got] == [2]
    # Day cap: 19.5 $ spent, another hour of 1.6 + 0.3 $/h would pass 20 $.
    assert rents(decide(snap(queued=5, work_s=9999, instances=busy, spent_today=19.5,
                             offers=(offer(2, 0.3),)), POLICY)) == []


def test_offer_choice() -> None:
    offers = (offer(1, 0.30, "A100 SXM4"), offer(2, 0.40, "RTX 3090"), offer(3, 0.35, "RTX 4090"),
              offer(4, 0.10, "RTX 4090", reliability=0.8), offer(5, 0.20, "RTX 4090", machine=77),
              offer(6, 2.00, "RTX 4090"), offer(7, 0.25, "RTX 4080", gpu_ram_mb=4000))
    ranked = rank_offers(offers, POLICY, avoid=frozenset({77}))
    # No NVENC (A100), unreliable, avoided machine, over the price, too little VRAM: out.
    # 0.35/1.0 (4090) beats 0.40/0.8 (3090) per encoded second.
    assert [o.offer_id for o in ranked] == [3, 2]


def test_boot_deadline_destroys_and_avoids_the_machine() -> None:
    stuck = inst("s", "booting", beat_age_s=None, age_s=700, machine=42)
    actions = decide(snap(queued=1, work_s=60, instances=(stuck,)), POLICY)
    assert Destroy(instance_id="s", reason="no heartbeat within the boot deadline (600s)",
                   avoid_machine=42) in actions
    assert len(rents(actions)) == 1  # replaced at once


def test_silent_agent_is_destroyed_without_blaming_the_machine() -> None:
    gone = inst("g", "busy", beat_age_s=120, job="j1", machine=9)
    (destroy, *_) = [a for a in decide(snap(running=1, work_s=60, instances=(gone,)), POLICY)
                     if isinstance(a, Destroy)]
    assert destroy.instance_id == "g" and destroy.avoid_machine is None


def test_idle_past_timeout_is_drained_busy_never() -> None:
    fleet = (inst("busy", "busy", job="j1"), inst("fresh", idle_for_s=10),
             inst("old", idle_for_s=400), inst("older", idle_for_s=900))
    actions = decide(snap(running=1, work_s=60, instances=fleet), POLICY)
    assert actions == [Drain(instance_id="older"), Drain(instance_id="old")]


def test_drained_machines_are_destroyed_once_their_job_is_done() -> None:
    # d1 is finishing j9 (the one running job): kept, and no new machine is rented for it.
    fleet = (inst("d1", "draining", job="j9"), inst("d2", "draining"))
    assert decide(snap(running=1, work_s=60, instances=fleet), POLICY) == [
        Destroy(instance_id="d2", reason="drained")]


def test_backlog_empty_everything_idle_goes() -> None:
    fleet = tuple(inst(f"i{n}", idle_for_s=301) for n in range(3))
    assert len([a for a in decide(snap(instances=fleet), POLICY) if isinstance(a, Drain)]) == 3


def test_measured_speeds_rank_offers_in_any_unit() -> None:
    offers = (offer(1, 0.36, "RTX 3090"), offer(2, 0.50, "RTX 4090"))
    # Priors (0.8 and 1.0): the 3090 is cheaper per encoded second (0.45 against 0.50).
    assert [o.offer_id for o in rank_offers(offers, POLICY)] == [1, 2]
    # Measured in media seconds per second, the 4090 is twice as fast: it wins (only the
    # ratio counts; the unit does not).
    for unit in (1.0, 60.0):
        speeds = {"RTX 3090": 2.0 * unit, "RTX 4090": 4.0 * unit}
        assert [o.offer_id for o in rank_offers(offers, POLICY, gpu_speed=speeds)] == [2, 1]
    got = rents(decide(snap(queued=1, work_s=60, offers=offers,
                            gpu_speed={"RTX 3090": 2.0, "RTX 4090": 4.0}), POLICY))
    assert [r.offer_id for r in got] == [2]


@pytest.mark.parametrize(("name", "snapshot", "expected_rents"), [
    # 1200 s of work within 600 s: 2 machines already up would do, but new ones boot for
    # 120 s first and drain only 480 s each, so 3.
    ("new machines lose their boot time", snap(queued=10, work_s=1200), 3),
    ("a machine up counts in full", snap(queued=10, work_s=1200, instances=(
        inst("u", "busy", job="j0"),)), 2),  # 600 + 2 x 480 >= 1200
    ("a booting one counts less", snap(queued=10, work_s=1200, instances=(
        inst("b", "booting", beat_age_s=None, age_s=20),)), 2),  # 500 + 480 < 1200
])
def test_scale_up_accounts_for_boot_time(name: str, snapshot: Snapshot,
                                         expected_rents: int) -> None:
    policy = Policy(max_instances=10, max_price_per_hour=9.0, expected_boot_s=120.0)
    assert len(rents(decide(snapshot, policy))) == expected_rents, name


def test_day_budget_spent_drains_everything_and_rents_nothing() -> None:
    fleet = (inst("busy", "busy", job="j1", price=0.8), inst("idle", idle_for_s=10, price=0.8),
             inst("boot", "booting", beat_age_s=None, age_s=30, price=0.4))
    # 2.0 $/h with 19.6 $ of 20 spent: 0.4 $ left lasts 12 minutes, under the 15 reserved.
    actions = decide(snap(queued=9, work_s=9999, instances=fleet, spent_today=19.6), POLICY)
    why = "the day's budget is spent"
    assert actions == [Drain(instance_id="busy", reason=why),
                       Drain(instance_id="idle", reason=why),
                       Destroy(instance_id="boot", reason=why)]
    # With 0.6 $ left (18 minutes) it carries on.
    assert not any(isinstance(a, Drain) for a in decide(
        snap(queued=9, work_s=9999, instances=fleet, spent_today=19.4), POLICY))


def test_a_spent_day_budget_destroys_even_machines_that_claim_to_be_busy() -> None:
    """The drain began with budget_reserve_s of burn left; a machine still running when the
    budget is gone (a very long job, or an agent heartbeating "busy" forever) is destroyed."""
    fleet = (inst("liar", "draining", job="j1", price=0.8), inst("busy", "busy", job="j2"),
             inst("done", "draining"))
    actions = decide(snap(queued=9, work_s=9999, instances=fleet, spent_today=20.0), POLICY)
    why = "the day's budget is spent and the machine was still running"
    assert actions == [Destroy(instance_id="done", reason="drained"),
                       Destroy(instance_id="busy", reason=why),
                       Destroy(instance_id="liar", reason=why)]


@pytest.mark.parametrize(("gpu", "nvenc"), [
    ("RTX A1000", True), ("RTX A3000", True), ("RTX A4000", True), ("RTX 4090", True),
    ("A10", True), ("A40", True), ("L4", True), ("Tesla T4", True),
    ("A100 SXM4", False), ("A100 PCIE", False), ("A100X", False), ("A30", False),
    ("H100 NVL", False), ("H100_SXM", False), ("GH200 SXM", False), ("A800 PCIE", False),
])
def test_only_the_models_without_nvenc_are_refused(gpu: str, nvenc: bool) -> None:
    assert has_nvenc(gpu) is nvenc


def test_a_job_far_over_the_mean_counts_so_the_queue_behind_it_gets_a_machine() -> None:
    """One machine stuck for 30 min on a job (a dripping download) with one job queued: the
    estimate used to be 1.5 mean jobs (90 s), which that one busy machine 'covers'."""
    speeds = SpeedBook(lambda _agent: None)  # no results yet: the 60 s prior
    backlog = Backlog(queued_jobs=1, running_jobs=1)
    assert speeds.work_s(backlog) == 90.0  # no ages known: half the mean each
    assert speeds.work_s(backlog, [10.0]) == 60.0 + 50.0  # early on: what is left of the mean
    stuck = speeds.work_s(backlog, [1800.0])
    assert stuck == 60.0 + 1800.0
    busy = (inst("a", "busy", job="slow"),)
    assert rents(decide(snap(queued=1, running=1, work_s=stuck, instances=busy), POLICY))
    assert not rents(decide(snap(queued=1, running=1, work_s=90.0, instances=busy), POLICY))
