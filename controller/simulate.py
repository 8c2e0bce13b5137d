"""``vidfleet simulate``: replay a job-arrival trace through the same ``decide()`` on a virtual
clock, and compare it with the old design (one GPU per request), a fixed pool and a
clairvoyant lower bound. Every policy is billed as Vast.ai bills: storage alone while an image
loads, the full price once the agent is up. Deterministic for a seed; no network, no wall clock.

    python -m controller.simulate --trace bench/traces/bursty.csv --max-instances 40
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from msgspec import structs

from controller.policy import Policy
from controller.simulation.baselines import fixed_pool, lower_bound, one_per_request
from controller.simulation.engine import Outcome, simulate_policy
from controller.simulation.fleet import JobState
from controller.simulation.provider import Market, ProviderModel, RandomFates, make_offers
from controller.simulation.report import PolicyResult, Report, format_report, result
from controller.simulation.trace import TraceError, TraceJob, WorkModel, load_trace

__all__ = ["compare", "format_report", "main", "run_ours", "run_simulation"]


def _states(jobs: Sequence[TraceJob], work: WorkModel) -> list[JobState]:
    return [JobState(work_s=work.work_s(j), arrival_s=j.arrival_s, operation=j.operation)
            for j in jobs]


def run_ours(jobs: Sequence[TraceJob], *, policy: Policy, model: ProviderModel,
             work: WorkModel, seed: int, tick_s: float = 5.0) -> Outcome:
    """One replay of ``decide()`` alone, with everything the run observed."""
    market = Market(make_offers(model, seed), offer_away_s=model.offer_away_s)
    return simulate_policy(_states(jobs, work), policy=structs.replace(policy, slots=model.slots),
                           market=market, fates=RandomFates(model, seed), tick_s=tick_s,
                           slot_gain=model.slot_gain)


def _ours_result(outcome: Outcome) -> PolicyResult:
    notes = [f"{outcome.rent_failures} rents failed"] if outcome.rent_failures else []
    if outcome.unfinished_jobs:
        notes.append(f"{outcome.unfinished_jobs} jobs UNFINISHED")
    return result("ours", waits_s=outcome.waits_s, cost=outcome.cost, busy_s=outcome.busy_s,
                  billed_s=outcome.billed_s, machines=outcome.machines, note=", ".join(notes))


def _pool(jobs: list[TraceJob], *, policy: Policy, model: ProviderModel, work: WorkModel,
          seed: int, size: int | None, p95_s: float) -> PolicyResult:
    """The given size, or the smallest pool whose p95 wait is at most ``p95_s``."""
    def run(n: int) -> PolicyResult:
        market = Market(make_offers(model, seed), offer_away_s=model.offer_away_s)
        return fixed_pool(_states(jobs, work), size=n, policy=policy, market=market)

    if size is not None:
        return run(size)
    low, high = 1, max(1, model.offers)
    if run(high).wait_p95_s > p95_s:
        return run(high)
    while low < high:  # p95 wait falls as the pool grows
        mid = (low + high) // 2
        low, high = (low, mid) if run(mid).wait_p95_s <= p95_s else (mid + 1, high)
    chosen = run(low)
    return structs.replace(chosen, note="smallest pool with p95 wait <= ours")


def compare(name: str, jobs: Sequence[TraceJob], *, policy: Policy,
            model: ProviderModel | None = None, work: WorkModel | None = None, seed: int = 0,
            tick_s: float = 5.0, pool_size: int | None = None) -> Report:
    """Ours, one GPU per request, a fixed pool and the lower bound on one trace."""
    model, work, jobs = model or ProviderModel(), work or WorkModel(), list(jobs)
    ours = _ours_result(run_ours(jobs, policy=policy, model=model, work=work, seed=seed,
                                 tick_s=tick_s))
    offers = make_offers(model, seed)
    old = one_per_request(_states(jobs, work), policy=policy,
                          market=Market(offers, offer_away_s=model.offer_away_s),
                          fates=RandomFates(model, seed))
    pool = _pool(jobs, policy=policy, model=model, work=work, seed=seed, size=pool_size,
                 p95_s=ours.wait_p95_s)
    bound = lower_bound(_states(jobs, work), policy=policy, offers=offers,
                        slot_gain=model.slot_gain)
    span_s = jobs[-1].arrival_s - jobs[0].arrival_s if jobs else 0.0
    return Report(trace=name, jobs=len(jobs), work_s=sum(work.work_s(j) for j in jobs),
                  span_s=span_s, results=(ours, old, pool, bound))


def run_simulation(trace_path: Path | str, *, policy: Policy,
                   model: ProviderModel | None = None, work: WorkModel | None = None,
                   seed: int = 0, tick_s: float = 5.0, pool_size: int | None = None) -> Report:
    """Load a trace CSV and ``compare`` the policies on it."""
    return compare(Path(trace_path).name, load_trace(trace_path), policy=policy, model=model,
                   work=work, seed=seed, tick_s=tick_s, pool_size=pool_size)


_POLICY_FLAGS = {  # flag -> (Policy field, type)
    "--min-warm": ("min_warm", int), "--max-instances": ("max_instances", int),
    "--target-wait-s": ("target_wait_s", float), "--hedge": ("hedge", float),
    "--burst-hedge": ("burst_hedge", float),
    "--warm-per-load": ("warm_per_load", float),
    "--target-drain-s": ("target_drain_s", float), "--idle-timeout-s": ("idle_timeout_s", float),
    "--boot-deadline-s": ("boot_deadline_s", float),
    "--expected-boot-s": ("expected_boot_s", float),
    "--rent-cooldown-s": ("rent_cooldown_s", float),
    # The same name as the controller's setting (VIDFLEET_MAX_SPEND_PER_HOUR).
    "--max-spend-per-hour": ("max_price_per_hour", float),
    "--max-spend-per-day": ("max_spend_per_day", float),
    "--max-offer-price-per-hour": ("max_offer_price_per_hour", float),
}


_OLD_NAMES = {"--max-spend-per-hour": ("--max-price-per-hour",)}  # still accepted


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidfleet simulate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", required=True, type=Path,
                        help="CSV with the header arrival_s,operation,media_s")
    parser.add_argument("--seed", type=int, default=0, help="market and fault luck (default 0)")
    parser.add_argument("--tick-s", type=float, default=5.0, help="controller tick (default 5)")
    parser.add_argument("--pool-size", type=int, default=None,
                        help="fixed pool size (default: smallest matching ours' p95 wait)")
    defaults = Policy()
    for flag, (name, kind) in _POLICY_FLAGS.items():
        parser.add_argument(flag, *_OLD_NAMES.get(flag, ()), dest=name, type=kind,
                            default=getattr(defaults, name),
                            help=f"Policy.{name} (default {getattr(defaults, name)})")
    parser.add_argument("--warm-below-boot", action=argparse.BooleanOptionalAction,
                        default=defaults.warm_below_boot,
                        help="Policy.warm_below_boot: keep machines up when rents come up "
                             f"after the wait target (default {defaults.warm_below_boot})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    policy = Policy(**{name: getattr(args, name) for name, _ in _POLICY_FLAGS.values()},
                    warm_below_boot=args.warm_below_boot)
    try:
        report = run_simulation(args.trace, policy=policy, seed=args.seed, tick_s=args.tick_s,
                                pool_size=args.pool_size)
    except (OSError, TraceError) as exc:
        print(f"vidfleet simulate: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
