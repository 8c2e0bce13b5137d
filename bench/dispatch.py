"""What dispatch costs: moving an input and a result through the dispatcher versus reading and
writing the object store directly (what agents did before they lost JetStream), and handing a
job over, measured side by side in one run.

One embedded nats-server, one dispatcher, one agent connection (as ``DispatchLink`` uses it).
Each round queues a job naming a ``--mib`` MiB input, has the agent take it, then moves the same
bytes both ways, alternating which path goes first:
- input: ``DispatchLink.fetch_input`` (a request per 256 KiB chunk; the dispatcher direct-gets
  each) against ``broker.objects.download`` (a named pull consumer, batches of 64 chunks);
- result: ``DispatchLink.upload`` (a request per chunk; the dispatcher publishes each into the
  bucket) against ``broker.objects.upload`` (nats-py's put);
- handover: a work request answered with the queued job, against a consumer ``fetch(1)``.

Run from the repository root: ``.venv/bin/python bench/dispatch.py [--mib 64] [--rounds 4]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, NamedTuple

from nats.js import JetStreamContext

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from broker.connect import connect  # noqa: E402
from broker.dispatch import Release  # noqa: E402
from broker.jobs import CaptionJob, encode_job  # noqa: E402
from broker.logs import setup_logging  # noqa: E402
from broker.object_writes import upload  # noqa: E402
from broker.objects import download  # noqa: E402
from broker.server import EmbeddedServer  # noqa: E402
from broker.subjects import (  # noqa: E402
    DEFAULT_TENANT,
    JOBS_CONSUMER,
    JOBS_STREAM,
    inputs_bucket,
    job_subject,
    results_bucket,
)
from broker.topology import TopologyConfig, ensure_topology  # noqa: E402
from controller.dispatcher import Dispatcher  # noqa: E402
from gpu_agent.dispatch_link import DispatchLink  # noqa: E402

AGENT = "vf-bench"
TENANT = DEFAULT_TENANT


class Stand(NamedTuple):
    url: str  # the embedded server's
    root: Path  # a temporary directory
    src: Path  # the input, stored in the default tenant's bucket as input.bin
    js: JetStreamContext  # the controller's


@contextlib.asynccontextmanager
async def dispatch_stand(mib: int, *, max_slots: int = 1) -> AsyncIterator[Stand]:
    """An embedded server with the topology, a ``mib`` MiB input stored, and a dispatcher."""
    with tempfile.TemporaryDirectory() as tmp, EmbeddedServer(Path(tmp) / "nats") as server:
        root = Path(tmp)
        src = root / "input.bin"
        src.write_bytes(os.urandom(mib << 20))
        ctl = await connect(server.url, name="bench-controller")
        js = ctl.jetstream()
        await ensure_topology(js, TopologyConfig(tenant_inputs_max_bytes=4 << 30,
                                                 tenant_results_max_bytes=4 << 30))
        await upload(js, inputs_bucket(TENANT), "input.bin", src)
        dispatcher = Dispatcher(js, max_slots=max_slots)
        await dispatcher.start(ctl)
        try:
            yield Stand(server.url, root, src, js)
        finally:
            await dispatcher.stop()
            await ctl.close()


async def _run(mib: int, rounds: int) -> None:
    async with dispatch_stand(mib) as (url, root, src, js):
        agent_nc = await connect(url, name=AGENT)
        link = DispatchLink(agent_nc, AGENT, timeout_s=30)
        seconds: dict[str, list[float]] = {k: [] for k in (
            "input via dispatcher", "input direct", "result via dispatcher", "result direct")}
        body = encode_job(CaptionJob(video="obj:input.bin", srt="obj:input.bin"))
        for n in range(rounds):
            await js.publish(job_subject(TENANT, "caption", f"j{n}"), body)
            grant = await link.next_job(10)
            assert grant is not None
            job_id, name = grant.job_id, f"{grant.job_id}/{grant.attempt}/out.bin"
            steps = {
                "input via dispatcher": link.fetch_input(
                    root / "a.bin", tenant=TENANT, job_id=job_id, name="input.bin"),
                "input direct": download(js, inputs_bucket(TENANT), "input.bin",
                                         root / "b.bin"),
                "result via dispatcher": link.upload(src, tenant=TENANT, job_id=job_id,
                                                     name=name),
                "result direct": upload(js, results_bucket(TENANT), f"direct-{n}", src),
            }
            names = list(steps)  # each pair: via first in even rounds, direct first in odd
            order = names if n % 2 == 0 else [names[1], names[0], names[3], names[2]]
            for name in order:
                t0 = time.perf_counter()
                await steps[name]
                seconds[name].append(time.perf_counter() - t0)
            await link.report(Release(job_id=grant.job_id, tenant=TENANT))
            await js.purge_stream(JOBS_STREAM)
        handover = await _handover(js, link, rounds=50)
        await agent_nc.close()
    rate = {k: mib / statistics.median(v) for k, v in seconds.items()}
    print(f"{mib} MiB moved {rounds} times each way, alternating order (median MiB/s):")
    for kind in ("input", "result"):
        via, direct = rate[f"{kind} via dispatcher"], rate[f"{kind} direct"]
        print(f"  {kind:6s} via the dispatcher: {via:7.0f} MiB/s   direct: {direct:7.0f} MiB/s"
              f"   via / direct: {via / direct:5.2f}x")
    via, direct = handover
    print(f"  handover: work request {via * 1000:.2f} ms, consumer fetch {direct * 1000:.2f} ms "
          f"(median of 50 each)")


async def _handover(js, link: DispatchLink, rounds: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """A queued job reaching an agent: through the dispatcher vs a consumer fetch of its own
    (made while the dispatcher is idle: it pulls only when an agent asks)."""
    body = encode_job(CaptionJob(video="obj:input.bin", srt="obj:input.bin"))
    via: list[float] = []
    for n in range(rounds):
        await js.publish(job_subject(TENANT, "caption", f"h{n}"), body)
        t0 = time.perf_counter()
        grant = await link.next_job(10)
        via.append(time.perf_counter() - t0)
        assert grant is not None
        await link.report(Release(job_id=grant.job_id, tenant=TENANT))
    await js.purge_stream(JOBS_STREAM)
    psub = await js.pull_subscribe_bind(JOBS_CONSUMER, JOBS_STREAM)
    direct: list[float] = []
    for n in range(rounds):
        await js.publish(job_subject(TENANT, "caption", f"d{n}"), body)
        t0 = time.perf_counter()
        [msg] = await psub.fetch(1, timeout=10)
        direct.append(time.perf_counter() - t0)
        await msg.ack()
    await psub.unsubscribe()
    return statistics.median(via), statistics.median(direct)


def main(run: Callable[[int, int], Coroutine[Any, Any, None]] = _run, *, doc: str = __doc__,
         mib: int = 64, rounds: int = 4) -> None:
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--mib", type=int, default=mib, help=f"input and result size (default {mib})")
    p.add_argument("--rounds", type=int, default=rounds, help=f"rounds (default {rounds})")
    args = p.parse_args()
    setup_logging("bench", level="WARNING")
    asyncio.run(run(args.mib, args.rounds))


if __name__ == "__main__":
    main()
