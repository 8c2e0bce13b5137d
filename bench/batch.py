"""How fast a batch gets in: ``vidfleet batch``'s submit phase on a 10,000-line manifest, and
``Client.submit_many`` with many requests in flight against one at a time, side by side.

One embedded nats-server in operator mode (as ``vidfleet up`` runs it), the gateway in this
process, and a tenant's client. No agent runs, so the queue only grows. The manifest's lines
name URL inputs (uploads are their own cost, measured in bench/dispatch.py).

- batch: ``BatchRun.run(wait=False)`` on the manifest: read and check every line, look each
  job up (a resumed run must not submit twice), submit them all, write the report;
- pipelined vs serial: blocks of ``--block`` submits through ``submit_many`` with 64 in flight
  and with 1, alternating which goes first.

Run from the repository root: ``.venv/bin/python bench/batch.py [--lines 10000] [--block 500]``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from broker.auth import mint_user  # noqa: E402
from broker.auth_store import AuthDir, create_tenant  # noqa: E402
from broker.connect import connect  # noqa: E402
from broker.creds import LiveCredentials, creds_text  # noqa: E402
from broker.jobs import CaptionJob  # noqa: E402
from broker.logs import setup_logging  # noqa: E402
from broker.server import EmbeddedServer  # noqa: E402
from broker.topology import TopologyConfig, ensure_tenant, ensure_topology  # noqa: E402
from client.api import Client  # noqa: E402
from client.batch_cli import BatchRun  # noqa: E402
from client.manifest import read_manifest  # noqa: E402
from controller.gateway import Gateway  # noqa: E402

TENANT = "bench"


async def _run(lines: int, block: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        auth = AuthDir(root / "auth")
        keys = auth.ensure()
        server = EmbeddedServer(root / "nats", extra_args=["-c", str(auth.server_conf)])
        with server:
            def creds(role: str, name: str, **kw: object) -> LiveCredentials:
                minted = mint_user(keys, role, name, expires_in_s=3600, **kw)  # type: ignore[arg-type]
                return LiveCredentials(minted.jwt.reveal(), minted.seed)

            ctl = await connect(server.url, name="bench-ctl", credentials=creds("controller",
                                                                               "ctl"))
            system = await connect(server.url, name="bench-sys", credentials=creds("system",
                                                                                  "sys"))
            js = ctl.jetstream()
            topology = TopologyConfig(max_queued_jobs=lines + 2 * rounds * block + 10)
            await ensure_topology(js, topology, tenants=())
            tenant = await create_tenant(js, system, keys, TENANT)
            await ensure_tenant(js, topology, TENANT)
            gateway = Gateway(js, max_queued_per_tenant=10**9)
            await gateway.start(ctl)
            creds_file = root / "bench.creds"
            creds_file.write_text(creds_text(mint_user(keys, "client", "bench",
                                                       expires_in_s=3600, tenant=tenant)))
            client = await Client.connect(server.url, creds_file=creds_file)

            manifest = root / "jobs.jsonl"
            manifest.write_text("".join(
                json.dumps({"operation": "caption", "video": "https://media.example/talk.mp4",
                            "srt": f"https://media.example/subs/{n}.srt"}) + "\n"
                for n in range(lines)))
            t0 = time.perf_counter()
            run = BatchRun(client, read_manifest(manifest), base=root, out_dir=root / "out",
                           stream=io.StringIO())
            await run.run(wait=False)
            batch_s = time.perf_counter() - t0
            refused = len(run.errors)

            rates: dict[int, list[float]] = {64: [], 1: []}
            for n in range(rounds):
                for inflight in ((64, 1) if n % 2 == 0 else (1, 64)):
                    jobs = [(f"p{inflight}-{n}-{i}", CaptionJob(
                        video="https://media.example/v.mp4", srt="obj:s.srt"))
                        for i in range(block)]
                    t1 = time.perf_counter()
                    await client.submit_many(jobs, concurrency=inflight)
                    rates[inflight].append(block / (time.perf_counter() - t1))
            await client.close()
            await gateway.stop()
            await ctl.close()
            await system.close()
    many, one = statistics.median(rates[64]), statistics.median(rates[1])
    print(f"vidfleet batch, {lines:,}-line manifest, submit phase (--no-wait): "
          f"{batch_s:.1f} s ({lines / batch_s:,.0f} lines/s), {refused} refused")
    print(f"submit_many, {rounds} alternating blocks of {block}:")
    print(f"  64 in flight: {many:8.0f}/s  (median of blocks)")
    print(f"  1 in flight:  {one:8.0f}/s")
    print(f"  64 / 1:       {many / one:8.2f}x the rate")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=10_000)
    p.add_argument("--block", type=int, default=500)
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args()
    setup_logging("bench", level="WARNING")
    asyncio.run(_run(args.lines, args.block, args.rounds))


if __name__ == "__main__":
    main()
