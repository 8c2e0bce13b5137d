"""The wait objective below a boot, replayed over the three traces: with the warm pool the
policy keeps for it (controller/sizing.py: the measured load plus its square root, in
machines, when a hedged rent more likely than not comes up after the target) and without it
(``warm_below_boot`` off: every queued job is only aimed at a boot).

Run from the repository root: ``.venv/bin/python bench/below_boot.py`` (about 5 minutes
here). For each target and trace, the mean over seeds 0-4 of the cost against the lower
bound and against one GPU per request, the p50 and p95 wait, and the share of jobs started
within the target. Both variants run side by side on the same seeds. At the default 120 s a
hedged rent is in time, the pool must stay off, and the two rows must be identical.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from msgspec import structs  # noqa: E402

from bench.simulate import NAMES, OURS, SEEDS, TRACES, bases, replay  # noqa: E402
from controller.simulation.trace import load_trace  # noqa: E402

TARGETS_S = (30.0, 60.0, 120.0)


def main() -> None:
    t0 = time.perf_counter()
    traces = {name: list(load_trace(TRACES / f"{name}.csv")) for name in NAMES}
    made = bases(traces)
    print("target  variant  trace    x bound  x 1/req  p50 s  p95 s  in target"
          "   (1/req p50 / p95 s)")
    for target in TARGETS_S:
        for variant in ("no pool", "pool"):
            policy = structs.replace(OURS, target_wait_s=target,
                                     warm_below_boot=variant == "pool")
            for name, jobs in traces.items():
                rows = [replay(jobs, policy, seed, made[name, seed]) for seed in SEEDS]
                inside = statistics.mean(
                    sum(w <= target for w in r.outcome.waits_s) / len(r.outcome.waits_s)
                    for r in rows)
                old50 = statistics.mean(r.base.old.wait_p50_s for r in rows)
                old95 = statistics.mean(r.base.old.wait_p95_s for r in rows)
                print(f"{target:>5.0f} s  {variant:<7}  {name:<7} "
                      f"{statistics.mean(r.x_bound for r in rows):>8.2f} "
                      f"{statistics.mean(r.x_old for r in rows):>8.2f} "
                      f"{statistics.mean(r.p50 for r in rows):>6.0f} "
                      f"{statistics.mean(r.p95 for r in rows):>6.0f} "
                      f"{inside:>9.0%}   ({old50:.0f} / {old95:.0f})", flush=True)
    print(f"\n(bench ran {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
