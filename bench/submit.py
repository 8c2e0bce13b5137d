"""What the submit gateway costs: submits through it versus the direct JetStream publish that
tenants used before they lost access to JOBS, measured side by side in one run.

Both paths store the same job bodies in JOBS on one embedded nats-server (no agent runs, so the
queue only grows). The gateway path is ``Client.submit``: the client's own body check, a request
to ``submit.<tenant>.caption.<id>``, the gateway's checks, the tenant's quota count (at most once
a second) and the JetStream publish it makes. The direct path is one ``js.publish`` with a
message id, as a client did before. Blocks of each alternate, so drift on a shared machine
hits both alike.

Run from the repository root: ``.venv/bin/python bench/submit.py [--jobs 2000] [--blocks 4]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from broker.connect import connect  # noqa: E402
from broker.jobs import CaptionJob, encode_job  # noqa: E402
from broker.logs import setup_logging  # noqa: E402
from broker.server import EmbeddedServer  # noqa: E402
from broker.subjects import DEFAULT_TENANT, job_subject  # noqa: E402
from broker.topology import TopologyConfig, ensure_topology  # noqa: E402
from client.api import Client  # noqa: E402
from controller.gateway import Gateway  # noqa: E402

JOB = CaptionJob(video="https://example.com/talk.mp4", srt="obj:u1/talk.srt")


async def _run(jobs: int, blocks: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedServer(Path(tmp) / "nats") as server:
        nc = await connect(server.url, name="bench-admin")
        js = nc.jetstream()
        await ensure_topology(js, TopologyConfig())
        gateway = Gateway(js, max_queued_per_tenant=10**9)
        await gateway.start(nc)
        client = await Client.connect(server.url, name="bench-client")
        body = encode_job(JOB)
        per_block = jobs // blocks
        rates: dict[str, list[float]] = {"gateway": [], "direct": []}
        for block in range(blocks):
            for path in (("gateway", "direct") if block % 2 == 0 else ("direct", "gateway")):
                t0 = time.perf_counter()
                for n in range(per_block):
                    job_id = f"{path}-{block}-{n}"
                    if path == "gateway":
                        await client.submit(JOB, job_id=job_id)
                    else:
                        await js.publish(job_subject(DEFAULT_TENANT, "caption", job_id), body,
                                         headers={"Nats-Msg-Id": f"{DEFAULT_TENANT}.{job_id}"})
                rates[path].append(per_block / (time.perf_counter() - t0))
        await client.close()
        await gateway.stop()
        await nc.close()
    gw, direct = statistics.median(rates["gateway"]), statistics.median(rates["direct"])
    print(f"submits, {blocks} alternating blocks of {per_block}, one at a time:")
    print(f"  through the gateway: {gw:8.0f}/s  (median of blocks)")
    print(f"  direct publish:      {direct:8.0f}/s")
    print(f"  gateway / direct:    {gw / direct:8.2f}x the rate "
          f"({1000 / gw:.2f} ms vs {1000 / direct:.2f} ms a submit)")
    print(f"  10,000 submits through the gateway: {10_000 / gw:.1f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2000, help="submits per path (default 2000)")
    p.add_argument("--blocks", type=int, default=4, help="alternating blocks (default 4)")
    args = p.parse_args()
    setup_logging("bench", level="WARNING")
    asyncio.run(_run(args.jobs, args.blocks))


if __name__ == "__main__":
    main()
