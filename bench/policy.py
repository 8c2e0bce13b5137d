"""How long one ``decide()`` takes at scale: 10,000 queued jobs, 200 instances, 500 offers.

The controller calls it every tick; it must stay far below the tick (target <= 10 ms) so that
observing, not deciding, bounds reaction time. Run: ``.venv/bin/python bench/policy.py``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from controller.policy import Instance, Offer, Policy, Snapshot, decide  # noqa: E402

TARGET_MS = 10.0


def snapshot(now: float = 1e6) -> Snapshot:
    states = ("busy", "idle", "booting", "draining")
    instances = tuple(
        Instance(instance_id=f"i{n}", machine_id=n, price_per_hour=0.3,
                 state=states[n % 4],  # type: ignore[arg-type]
                 launched_at=now - 3600, last_heartbeat_at=now - 2,
                 idle_since=now - 400 if n % 4 == 1 else None,
                 job_id=f"j{n}" if n % 4 in (0, 3) else None)
        for n in range(200))
    offers = tuple(
        Offer(offer_id=n, machine_id=10_000 + n,
              gpu_name=("RTX 4090", "RTX 3090", "A100", "L4")[n % 4], gpu_ram_mb=24000,
              price_per_hour=0.2 + (n % 50) / 100, reliability=0.95 + (n % 5) / 100,
              inet_down_mbps=800.0, cuda_max_good=12.2)
        for n in range(500))
    return Snapshot(now=now, queued_jobs=10_000, running_jobs=100, backlog_work_s=10_000 * 30,
                    instances=instances, offers=offers, spent_today=10.0,
                    failed_machines=frozenset(range(10_000, 10_050)))


def main() -> None:
    snap, policy = snapshot(), Policy(max_instances=300, max_price_per_hour=200.0,
                                      max_spend_per_day=5000.0)
    times_ms = []
    for _ in range(300):
        t0 = time.perf_counter()
        actions = decide(snap, policy)
        times_ms.append((time.perf_counter() - t0) * 1000)
    times_ms.sort()
    p50, p99 = statistics.median(times_ms), times_ms[int(len(times_ms) * 0.99) - 1]
    verdict = "met" if p50 <= TARGET_MS else "MISSED"
    print(f"decide() with 10,000 queued jobs, 200 instances, 500 offers: {len(actions)} actions")
    print(f"p50 {p50:.2f} ms, p99 {p99:.2f} ms (target <= {TARGET_MS:.0f} ms: {verdict})")


if __name__ == "__main__":
    main()
