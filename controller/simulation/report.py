"""What a replay reports per policy, and the table ``vidfleet simulate`` prints."""

from __future__ import annotations

from msgspec import Struct

from controller.simulation.engine import Outcome

__all__ = ["CostGap", "PolicyResult", "Report", "cost_gap", "format_report", "percentile",
           "result"]


class PolicyResult(Struct, frozen=True, kw_only=True):
    name: str
    cost: float  # dollars
    wait_p50_s: float  # arrival to start
    wait_p95_s: float
    utilisation: float  # busy machine-seconds / billed machine-seconds
    machines: int  # rented (0 for the lower bound, which rents nothing real)
    note: str = ""


class Report(Struct, frozen=True, kw_only=True):
    trace: str
    jobs: int
    work_s: float  # encoder seconds at speed 1.0, all jobs
    span_s: float  # first to last arrival
    results: tuple[PolicyResult, ...]  # ours first, one GPU per request second


def percentile(values: list[float] | tuple[float, ...], q: float) -> float:
    """Linear interpolation between closest ranks; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def result(name: str, *, waits_s: list[float] | tuple[float, ...], cost: float,
           busy_s: float, billed_s: float, machines: int, note: str = "") -> PolicyResult:
    return PolicyResult(name=name, cost=cost, wait_p50_s=percentile(waits_s, 50),
                        wait_p95_s=percentile(waits_s, 95),
                        utilisation=busy_s / billed_s if billed_s > 0 else 1.0,
                        machines=machines, note=note)


def format_report(report: Report) -> str:
    base = next((r.cost for r in report.results if r.name == "one GPU per request"), None)
    lines = [f"trace {report.trace}: {report.jobs} jobs over {report.span_s / 3600:.1f} h, "
             f"{report.work_s / 3600:.1f} h of encoder work at speed 1.0",
             f"{'policy':<22} {'cost $':>9} {'x 1/req':>8} {'p50 wait s':>11} "
             f"{'p95 wait s':>11} {'util':>6} {'machines':>9}  note"]
    for r in report.results:
        ratio = f"{r.cost / base:.2f}" if base else "-"
        lines.append(f"{r.name:<22} {r.cost:>9.2f} {ratio:>8} {r.wait_p50_s:>11.1f} "
                     f"{r.wait_p95_s:>11.1f} {r.utilisation:>6.0%} {r.machines:>9}  {r.note}")
    return "\n".join(lines)


class CostGap(Struct, frozen=True, kw_only=True):
    """Where a replay's bill goes beyond the lower bound; the four parts sum to the gap."""

    bound: float  # all the trace's work at the cheapest acceptable price per encoded second
    boot: float  # storage while images load, and for machines that never came up
    idle: float  # full price while up and running no job: idle timeouts, drains, dead agents
    ladder: float  # busy seconds at the prices rented, less that work at the cheapest price
    lost: float  # work done again after an agent died, at the cheapest price


def cost_gap(outcome: Outcome, *, work_s: float, per_work_s: float) -> CostGap:
    """``work_s``: the trace's encoder seconds at speed 1.0; ``per_work_s``: the cheapest
    acceptable dollars per such second (``baselines.cheapest_per_work_s``)."""
    at_cheapest = outcome.work_done_s * per_work_s
    return CostGap(bound=work_s * per_work_s, boot=outcome.boot_cost, idle=outcome.idle_cost,
                   ladder=outcome.busy_cost - at_cheapest,
                   lost=(outcome.work_done_s - work_s) * per_work_s)
