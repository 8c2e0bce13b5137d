"""An agent far from the server: reading an input and sending a result through the dispatcher
over a link with a round trip of 0-150 ms (a rented machine on another continent), with
different request windows, side by side in one run.

The agent's connection goes through a TCP proxy in this process that delays every byte by
half the round trip each way (no bandwidth limit, order kept), so only the latency differs
from bench/dispatch.py. A transfer keeps a window of chunk requests (256 KiB each) in flight:
at most a window per round trip, so at 100 ms a window of 16 (4 MiB) caps it at 40 MiB/s,
whatever the host's bandwidth.

Run from the repository root: ``.venv/bin/python bench/far_agent.py [--mib 32] [--rounds 2]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.dispatch import TENANT, dispatch_stand, main  # noqa: E402
from broker.connect import connect  # noqa: E402
from broker.dispatch import Release  # noqa: E402
from broker.jobs import CaptionJob, encode_job  # noqa: E402
from broker.subjects import JOBS_STREAM, job_subject  # noqa: E402
from gpu_agent.dispatch_link import DispatchLink  # noqa: E402

AGENT = "vf-far"
RTTS_MS = (0, 25, 50, 100, 150)
WINDOWS = (16, 32, 64)


class DelayProxy:
    """A TCP proxy to ``target`` that holds every byte for ``one_way_s`` in each direction."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.one_way_s = 0.0
        self._target = target
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"nats://127.0.0.1:{port}"

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(*self._target)
        for src, dst in ((reader, up_w), (up_r, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                at, data = await due.get()
                if (wait := at - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                dst.write(data)
                await dst.drain()

        sender = asyncio.create_task(deliver())
        try:
            while data := await src.read(1 << 16):
                due.put_nowait((time.monotonic() + self.one_way_s, data))
            while not due.empty():
                await asyncio.sleep(self.one_way_s or 0.001)
        finally:
            sender.cancel()
            with contextlib.suppress(Exception):
                dst.close()


async def _run(mib: int, rounds: int) -> None:
    # Eight slots' bound on unanswered messages: the window of 64 is over one slot's.
    async with dispatch_stand(mib, max_slots=8) as (url, root, src, js):
        host, port = url.removeprefix("nats://").rsplit(":", 1)
        proxy = DelayProxy((host, int(port)))
        agent_nc = await connect(await proxy.start(), name=AGENT)
        body = encode_job(CaptionJob(video="obj:input.bin", srt="obj:input.bin"))
        print(f"{mib} MiB each way, {rounds} rounds, windows alternating order; MiB/s (median)")
        print(f"  {'rtt':>6}  " + "  ".join(f"{'in w' + str(w):>8} {'up w' + str(w):>8}"
                                             for w in WINDOWS))
        n = 0
        for rtt_ms in RTTS_MS:
            proxy.one_way_s = rtt_ms / 2000
            rates: dict[tuple[str, int], list[float]] = {}
            for r in range(rounds):
                for window in (WINDOWS if r % 2 == 0 else WINDOWS[::-1]):
                    link = DispatchLink(agent_nc, AGENT, timeout_s=60, input_window=window,
                                        upload_window=window)
                    await js.publish(job_subject(TENANT, "caption", f"j{n}"), body)
                    grant = await link.next_job(10)
                    assert grant is not None
                    steps: dict[str, Callable[[], Awaitable[object]]] = {
                        "in": functools.partial(link.fetch_input, root / "a.bin",
                                                tenant=TENANT, job_id=grant.job_id,
                                                name="input.bin"),
                        "up": functools.partial(link.upload, src, tenant=TENANT,
                                                job_id=grant.job_id,
                                                name=f"{grant.job_id}/{grant.attempt}/o.bin"),
                    }
                    for kind, step in steps.items():
                        t0 = time.perf_counter()
                        await step()
                        rates.setdefault((kind, window), []).append(
                            mib / (time.perf_counter() - t0))
                    await link.report(Release(job_id=grant.job_id, tenant=TENANT))
                    await js.purge_stream(JOBS_STREAM)
                    n += 1
            cells = [f"{statistics.median(rates['in', w]):8.0f} "
                     f"{statistics.median(rates['up', w]):8.0f}" for w in WINDOWS]
            print(f"  {rtt_ms:>3} ms  " + "  ".join(cells), flush=True)
        await agent_nc.close()
        await proxy.stop()


if __name__ == "__main__":
    main(_run, doc=__doc__, mib=32, rounds=2)
