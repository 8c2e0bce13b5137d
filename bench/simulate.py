"""The scaling policy replayed over the three traces in bench/traces, against the old design.

For each trace: cost, p50/p95 wait, utilisation and machines of ours (the same ``decide()`` the
controller runs), one GPU per request (the old design), the smallest fixed pool whose p95 wait
matches ours, and the clairvoyant lower bound. Then the bursty trace's targets (cost <= 0.5x
one GPU per request with a p95 wait no worse, and within 1.2x of the lower bound) over five
seeds, where ours' gap to the lower bound goes (boot, idle tails, price ladder, lost work),
ours as target_drain_s and then idle_timeout_s vary, and ``decide()``'s time at scale.
Costs are billed as Vast.ai bills (storage alone while an image loads). Deterministic: the
same figures every run, except the timing.

Run: ``.venv/bin/python bench/simulate.py``.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from msgspec import structs  # noqa: E402

from controller.policy import Policy, decide, rank_offers  # noqa: E402
from controller.simulate import compare, run_ours  # noqa: E402
from controller.simulation.baselines import cheapest_per_work_s  # noqa: E402
from controller.simulation.engine import Outcome  # noqa: E402
from controller.simulation.provider import ProviderModel, make_offers  # noqa: E402
from controller.simulation.report import (  # noqa: E402
    CostGap,
    PolicyResult,
    cost_gap,
    format_report,
    percentile,
)
from controller.simulation.trace import TraceJob, WorkModel, load_trace  # noqa: E402

TRACES = REPO_ROOT / "bench" / "traces"
# The fleet caps are sized for the bursts (up to 200 jobs in a minute). target_drain_s and
# idle_timeout_s were chosen with the sweeps below on the bursty trace: no setting meets all
# three targets, so this is the cheapest one whose p95 wait beats one GPU per request on all
# five seeds. A boot bills only storage, so an idle machine kept for the next job costs more
# than renting again; the idle timeout buys only wait, and the bursty p95 does not need it.
OURS = Policy(max_instances=40, max_price_per_hour=20.0, max_spend_per_day=300.0,
              target_drain_s=210.0, idle_timeout_s=0.0)
SEEDS = range(5)
COST_VS_OLD, COST_VS_BOUND = 0.5, 1.2
DRAINS_S = (120, 180, 200, 210, 220, 240, 300, 600, 1200)
IDLE_TIMEOUTS_S = (0, 15, 30, 60, 120)
DECIDE_TARGET_MS = 10.0


class Seed(NamedTuple):
    """What ours is held to on one seed's market and luck."""

    old: PolicyResult  # one GPU per request
    bound: PolicyResult
    per_work_s: float  # the cheapest acceptable dollars per encoder second


class Run(NamedTuple):
    outcome: Outcome
    gap: CostGap

    @property
    def p95_s(self) -> float:
        return percentile(self.outcome.waits_s, 95)


def seeds(jobs: list[TraceJob]) -> dict[int, Seed]:
    made = {}
    for seed in SEEDS:
        _, old, _, bound = compare("bursty", jobs, policy=OURS, seed=seed, pool_size=1).results
        per_work_s = cheapest_per_work_s(OURS, make_offers(ProviderModel(), seed))
        assert per_work_s is not None
        made[seed] = Seed(old, bound, per_work_s)
    return made


def run(jobs: list[TraceJob], policy: Policy, seed: int, base: Seed) -> Run:
    work = WorkModel()
    out = run_ours(jobs, policy=policy, model=ProviderModel(), work=work, seed=seed)
    work_s = sum(work.work_s(j) for j in jobs)
    return Run(out, cost_gap(out, work_s=work_s, per_work_s=base.per_work_s))


def met(r: Run, base: Seed) -> tuple[bool, bool, bool]:
    cost = r.outcome.cost
    return (cost <= COST_VS_OLD * base.old.cost, r.p95_s <= base.old.wait_p95_s,
            cost <= COST_VS_BOUND * base.bound.cost)


def word(ok: bool) -> str:
    return "met" if ok else "MISSED"


def bursty_targets(jobs: list[TraceJob], bases: dict[int, Seed]) -> None:
    print("\nbursty targets by seed (ours / one GPU per request / lower bound):")
    runs = {seed: run(jobs, OURS, seed, base) for seed, base in bases.items()}
    all_met = 0
    for seed, r in runs.items():
        base, cost = bases[seed], r.outcome.cost
        ok = met(r, base)
        all_met += all(ok)
        print(f"  seed {seed}: cost {cost / base.old.cost:.2f}x one per request ({word(ok[0])}), "
              f"p95 wait {r.p95_s:.0f} s vs {base.old.wait_p95_s:.0f} s ({word(ok[1])}), "
              f"{cost / base.bound.cost:.2f}x the lower bound ({word(ok[2])})")
    print(f"  all three targets met on {all_met} of {len(SEEDS)} seeds")
    print("\nbursty: ours' cost as the lower bound plus where the rest goes, in $ (x the bound)")
    for seed, r in runs.items():
        g, out = r.gap, r.outcome
        print(f"  seed {seed}: ${out.cost:.2f} = bound {g.bound:.2f} + boot {g.boot:.3f} "
              f"({g.boot / g.bound:.2f}) + idle/drain {g.idle:.2f} ({g.idle / g.bound:.2f}) "
              f"+ price ladder {g.ladder:.2f} ({g.ladder / g.bound:.2f}) + lost work "
              f"{round(g.lost, 6) + 0.0:.3f} ({round(g.lost / g.bound, 6) + 0.0:.2f}); "
              f"metered ${out.metered_cost:.2f}")
    steps = {"2nd": 2, "10th": 10, "20th": 20, "40th": 40}
    rungs = ", ".join(f"{name} {x:.2f}x" for name, x in zip(steps, ladder(0, steps.values()),
                                                            strict=True))
    peak = max(t.instances for t in runs[0].outcome.ticks)
    print(f"  the ladder on seed 0's market, per encoded second against the cheapest acceptable "
          f"offer: {rungs}; ours holds up to {peak} machines in a burst")


def ladder(seed: int, steps: Iterable[int]) -> list[float]:
    """The n-th cheapest acceptable offer per encoded second (true speeds), over the cheapest."""
    offers = make_offers(ProviderModel(), seed)
    speed = {m.offer.offer_id: m.speed for m in offers}
    prices = sorted(o.price_per_hour / speed[o.offer_id]
                    for o in rank_offers(tuple(m.offer for m in offers), OURS))
    return [prices[n - 1] / prices[0] for n in steps]


def sweep(jobs: list[TraceJob], bases: dict[int, Seed], knob: str,
          values: tuple[int, ...]) -> None:
    fixed = "idle_timeout_s" if knob == "target_drain_s" else "target_drain_s"
    print(f"\nbursty: ours as {knob} varies ({fixed} {getattr(OURS, fixed):.0f}); seed 0, "
          "then the worst p95 margin and mean cost over seeds 0-4")
    print(f"  {knob:>14} {'cost $':>7} {'x1/req':>6} {'xbound':>6} {'boot':>5} {'idle':>5} "
          f"{'ladder':>6} {'p50 s':>6} {'p95 s':>6} {'util':>5} {'booting':>7} | "
          f"{'p95 - 1/req':>11} {'mean xbound':>11} {'mean x1/req':>11}")
    for value in values:
        policy = structs.replace(OURS, **{knob: float(value)})
        runs = [(run(jobs, policy, seed, b), b) for seed, b in bases.items()]
        (r, base), (out, g) = runs[0], (runs[0][0].outcome, runs[0][0].gap)
        margin_s = max(x.p95_s - b.old.wait_p95_s for x, b in runs)
        mean_bound = statistics.mean(x.outcome.cost / b.bound.cost for x, b in runs)
        mean_old = statistics.mean(x.outcome.cost / b.old.cost for x, b in runs)
        print(f"  {value:>14} {out.cost:>7.2f} {out.cost / base.old.cost:>6.2f} "
              f"{out.cost / g.bound:>6.2f} {g.boot / g.bound:>5.2f} {g.idle / g.bound:>5.2f} "
              f"{g.ladder / g.bound:>6.2f} {percentile(out.waits_s, 50):>6.0f} "
              f"{r.p95_s:>6.0f} {out.busy_s / out.billed_s:>5.0%} "
              f"{out.booting_s / out.billed_s:>7.0%} | {margin_s:>+9.0f} s "
              f"{mean_bound:>11.2f} {mean_old:>11.2f}")


def decide_time() -> None:
    spec = importlib.util.spec_from_file_location("bench_policy", REPO_ROOT / "bench/policy.py")
    assert spec is not None and spec.loader is not None
    bench_policy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_policy)
    snap = bench_policy.snapshot()
    policy = Policy(max_instances=300, max_price_per_hour=200.0, max_spend_per_day=5000.0)
    times_ms = []
    for _ in range(300):
        t0 = time.perf_counter()
        decide(snap, policy)
        times_ms.append((time.perf_counter() - t0) * 1000)
    p50 = statistics.median(times_ms)
    print(f"\ndecide() with 10,000 queued jobs, 200 instances, 500 offers: p50 {p50:.2f} ms, "
          f"p99 {sorted(times_ms)[296]:.2f} ms (target <= {DECIDE_TARGET_MS:.0f} ms: "
          f"{'met' if p50 <= DECIDE_TARGET_MS else 'MISSED'})")


def main() -> None:
    t0 = time.perf_counter()
    print(f"ours: {OURS}\nprovider model: {ProviderModel()}\nwork model: {WorkModel()}\n")
    for name in ("steady", "bursty", "diurnal"):
        print(format_report(compare(name, load_trace(TRACES / f"{name}.csv"), policy=OURS,
                                    seed=0)))
        print()
    jobs = list(load_trace(TRACES / "bursty.csv"))
    bases = seeds(jobs)
    bursty_targets(jobs, bases)
    sweep(jobs, bases, "target_drain_s", DRAINS_S)
    sweep(jobs, bases, "idle_timeout_s", IDLE_TIMEOUTS_S)
    decide_time()
    print(f"\n(bench ran {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
