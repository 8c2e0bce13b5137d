"""What the fleet costs on top of FFmpeg, measured side by side on the real stack.

A caption job through vidfleet does much more than run FFmpeg: the client uploads its inputs to
the object store, publishes the job, the agent pulls it, downloads and probes the inputs, runs
FFmpeg, probes and uploads the output, reports events, and the client downloads the result.
This benchmark answers how much all of that adds, so the numbers are *ratios* of runs made
side by side in one process, alternating which goes first; on a shared, noisy machine absolute
seconds drift from minute to minute, ratios of neighbouring runs much less.

Measured, on an embedded nats-server with one warm in-process agent:

1. Fleet overhead: wall-clock of the exact FFmpeg argv the agent runs for a caption job
   (``caption_argv``, same encoder, fonts and input whitelist) versus the whole client path
   (upload both inputs, submit, wait for the result, download the output). Target: median
   fleet/raw <= 1.05.
2. Submit -> started latency: the job's Queued event ``at`` (the server's storage timestamp of
   the job) to its Started event ``at`` (the agent's clock when it begins the attempt); one
   machine, one clock. Gathered over the fleet rounds plus a loop of tiny jobs whose inputs
   are already uploaded, each finishing before the next is submitted. Target: p50 <= 20 ms.
3. Object-store transfer of a random file: upload MB/s with ``broker.object_writes.upload``
   versus nats-py's ``ObjectStore.put``, and download MB/s with ``broker.objects.download``
   versus nats-py's ``ObjectStore.get``.
   Target: ours/built-in >= 3x.

Run from the repository root: ``.venv/bin/python bench/overhead.py`` (``--quick`` for a smoke
run, ``--help`` for the knobs). MB is 10^6 bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from nats.aio.client import Client as Nats  # noqa: E402
from nats.js import JetStreamContext  # noqa: E402
from nats.js.api import ObjectMeta, ObjectMetaOptions  # noqa: E402

from broker.connect import connect  # noqa: E402
from broker.events import Queued, Started, Succeeded, Timings  # noqa: E402
from broker.jobs import CaptionJob, JobRequest  # noqa: E402
from broker.logs import setup_logging  # noqa: E402
from broker.object_writes import upload  # noqa: E402
from broker.objects import CHUNK_SIZE_BYTES, download  # noqa: E402
from broker.server import EmbeddedServer, find_nats_server  # noqa: E402
from broker.subjects import DEFAULT_TENANT, inputs_bucket  # noqa: E402
from broker.topology import TopologyConfig, ensure_topology  # noqa: E402
from client.api import Client  # noqa: E402
from client.sample import make_video  # noqa: E402
from controller.dispatcher import Dispatcher  # noqa: E402
from controller.gateway import Gateway  # noqa: E402
from gpu_agent.agent import Agent  # noqa: E402
from gpu_agent.config import AgentConfig  # noqa: E402
from gpu_agent.fonts import find_fonts_dir  # noqa: E402
from gpu_agent.media import INPUT_FORMATS  # noqa: E402
from gpu_agent.ops.caption import caption_argv  # noqa: E402
from gpu_agent.srt import Cue, format_srt  # noqa: E402

OVERHEAD_TARGET = 1.05
LATENCY_P50_TARGET_MS = 20.0
DOWNLOAD_RATIO_TARGET = 3.0
JOB_TIMEOUT_S = 600.0


# ---------------------------------------------------------------- test media


@dataclass(frozen=True)
class Media:
    video: Path  # the benchmark's caption input
    srt: Path
    tiny_video: Path  # the latency loop's input
    tiny_srt: Path
    blob: Path  # random bytes for the transfer rounds
    blob_bytes: int


def make_srt(path: Path, *, seconds: float, cues: int = 3) -> Path:
    """``cues`` evenly spread cues, written in the agent's own canonical form, so the file
    FFmpeg reads in the raw run is byte for byte the one the agent writes for its run."""
    slot = seconds / cues
    path.write_text(format_srt([
        Cue(round(i * slot + 0.1 * slot, 3), round(i * slot + 0.9 * slot, 3),
            f"vidfleet benchmark cue {i + 1}")
        for i in range(cues)
    ]), encoding="utf-8")
    return path


def make_blob(path: Path, size_bytes: int) -> Path:
    with open(path, "wb") as f:
        for offset in range(0, size_bytes, 1 << 20):
            f.write(os.urandom(min(1 << 20, size_bytes - offset)))
    return path


def make_media(root: Path, args: argparse.Namespace) -> Media:
    blob_bytes = int(args.transfer_mb * 1_000_000)
    return Media(
        video=make_video(root / "talk.mp4", seconds=args.video_seconds, size="1280x720"),
        srt=make_srt(root / "talk.srt", seconds=args.video_seconds),
        tiny_video=make_video(root / "tiny.mp4", seconds=1.0, size="320x240"),
        tiny_srt=make_srt(root / "tiny.srt", seconds=1.0, cues=2),
        blob=make_blob(root / "blob.bin", blob_bytes),
        blob_bytes=blob_bytes,
    )


# ---------------------------------------------------------------- the stack


@dataclass
class Stack:
    server: EmbeddedServer
    nc: Nats  # an admin connection, for the raw object-store rounds
    js: JetStreamContext
    agent: Agent
    client: Client
    fonts_dir: str


@contextlib.asynccontextmanager
async def running_agent(nats_url: str, work_dir: Path) -> AsyncIterator[Agent]:
    """An in-process agent with production defaults, bound and pulling when entered."""
    agent, stop = Agent(AgentConfig(nats_url=nats_url, work_dir=str(work_dir))), asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    ready = asyncio.create_task(agent.ready.wait())
    await asyncio.wait({task, ready}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        ready.cancel()
        stop.set()
        await task  # raises the agent's start-up error, if that is why it is not ready
        raise RuntimeError("the agent did not become ready within 120 s")
    try:
        yield agent
    finally:
        stop.set()
        await task


@contextlib.asynccontextmanager
async def running_stack(root: Path) -> AsyncIterator[Stack]:
    """nats-server + topology + one agent + one client; all stopped in reverse on exit."""
    async with contextlib.AsyncExitStack() as exits:
        server = EmbeddedServer(root / "nats").start()
        exits.callback(server.stop)
        nc = await connect(server.url, name="bench-admin")
        exits.push_async_callback(nc.close)
        js = nc.jetstream()
        await ensure_topology(js, TopologyConfig())
        gateway = Gateway(js)  # the controller's submit gateway
        await gateway.start(nc)
        exits.push_async_callback(gateway.stop)
        dispatcher = Dispatcher(js)  # and its dispatcher: agents get jobs from it
        await dispatcher.start(nc)
        exits.push_async_callback(dispatcher.stop)
        agent = await exits.enter_async_context(running_agent(server.url, root / "agent"))
        client = await Client.connect(server.url, name="bench-client")
        exits.push_async_callback(client.close)
        yield Stack(server, nc, js, agent, client, find_fonts_dir(""))


# ---------------------------------------------------------------- fleet overhead


@dataclass(frozen=True)
class ClientPhases:
    """The client's side of one fleet run, each timed where the client waits for it."""

    upload_s: float  # both inputs into the tenant's inputs bucket
    submit_s: float  # the gateway's receipt
    wait_s: float  # the receipt to the outcome event
    download_s: float  # the result, checked against the outcome's SHA-256


@dataclass(frozen=True)
class RoundResult:
    raw_first: bool
    raw_s: float
    fleet_s: float
    agent: Timings  # the agent's own breakdown of the fleet run
    client: ClientPhases
    queue_to_start_ms: float

    @property
    def ratio(self) -> float:
        return self.fleet_s / self.raw_s

    @property
    def outside_ffmpeg_s(self) -> float:
        """Fleet time not spent in the agent's FFmpeg run: measured within one run, so it is
        far steadier on a noisy machine than the difference of two runs."""
        return self.fleet_s - self.agent.encode_s

    def where(self) -> dict[str, float]:
        return outside_ffmpeg(self.agent, self.client)


def outside_ffmpeg(a: Timings, c: ClientPhases) -> dict[str, float]:
    """Where the time outside FFmpeg went: the client's own phases, the agent's (an input
    probe that runs beside FFmpeg is not counted; one that runs before it is "agent other"),
    and the handover (waiting for the outcome beyond the agent's own time: the lease, the
    events and their delivery)."""
    return {"client upload": c.upload_s, "submit": c.submit_s, "agent fetch": a.fetch_s,
            "agent upload": a.upload_s,
            "agent other": a.total_s - a.fetch_s - a.encode_s - a.upload_s,
            "handover": c.wait_s - a.total_s, "client download": c.download_s}


async def run_raw(stack: Stack, media: Media, out: Path) -> float:
    """The argv the agent would build for this job, run the way the agent runs it (async
    child, stdout drained), timed wall-clock."""
    assert stack.agent.encoders is not None
    argv = caption_argv(ffmpeg=stack.agent.config.ffmpeg, video_path=str(media.video),
                        srt_path=str(media.srt), output_path=str(out),
                        encoder=stack.agent.encoders.h264, fonts_dir=stack.fonts_dir,
                        input_formats=INPUT_FORMATS)
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"raw FFmpeg failed ({proc.returncode}): {err.decode()[-500:]}")
    out.unlink()
    return elapsed


async def client_path(vf: Client, inputs: dict[str, Path],
                      job: Callable[[dict[str, str]], JobRequest], out: Path
                      ) -> tuple[float, Succeeded, ClientPhases]:
    """Upload the inputs, submit the job built from their refs, wait for the result,
    download it: the whole client path, timed by phase."""
    t0 = time.perf_counter()
    refs = {label: await vf.upload_input(path) for label, path in inputs.items()}
    t1 = time.perf_counter()
    receipt = await vf.submit(job(refs))
    t2 = time.perf_counter()
    done = await vf.result(receipt.job_id, timeout_s=JOB_TIMEOUT_S)
    if not isinstance(done, Succeeded):
        raise RuntimeError(f"job {receipt.job_id} did not succeed: {done}")
    t3 = time.perf_counter()
    await vf.download(done.output, out)
    t4 = time.perf_counter()
    out.unlink()
    return t4 - t0, done, ClientPhases(t1 - t0, t2 - t1, t3 - t2, t4 - t3)


async def run_fleet(stack: Stack, video: Path, srt: Path, out: Path
                    ) -> tuple[float, Succeeded, ClientPhases]:
    return await client_path(stack.client, {"video": video, "srt": srt},
                             lambda r: CaptionJob(video=r["video"], srt=r["srt"], cache=False),
                             out)


async def queue_to_start_ms(client: Client, job_id: str) -> float:
    """Queued.at (server storage time) to the first Started.at (agent clock), replayed from
    the job's events after it finished."""
    queued = started = None
    async for event in client.watch(job_id, timeout_s=60):
        if isinstance(event, Queued):
            queued = event.at
        elif isinstance(event, Started) and started is None:
            started = event.at
    if queued is None or started is None:
        raise RuntimeError(f"job {job_id}: no queued or started event")
    return (started - queued) * 1000.0


async def overhead_round(stack: Stack, media: Media, out_dir: Path, n: int) -> RoundResult:
    raw_first = n % 2 == 0
    raw_s = 0.0
    fleet: tuple[float, Succeeded, ClientPhases] | None = None
    for which in ("raw", "fleet") if raw_first else ("fleet", "raw"):
        if which == "raw":
            raw_s = await run_raw(stack, media, out_dir / "raw.mp4")
        else:
            fleet = await run_fleet(stack, media.video, media.srt, out_dir / "fleet.mp4")
    assert fleet is not None
    fleet_s, done, phases = fleet
    latency = await queue_to_start_ms(stack.client, done.job_id)
    return RoundResult(raw_first, raw_s, fleet_s, done.timings, phases, latency)


def print_round(n: int, r: RoundResult) -> None:
    t = r.agent
    print(f"  round {n + 1} ({'raw' if r.raw_first else 'fleet'} first): raw {r.raw_s:6.2f} s"
          f"  fleet {r.fleet_s:6.2f} s  ratio {r.ratio:.3f}  | agent: fetch {t.fetch_s:.2f}"
          f" validate {t.validate_s:.2f} encode {t.encode_s:.2f} upload {t.upload_s:.2f}"
          f" total {t.total_s:.2f} s | outside FFmpeg {r.outside_ffmpeg_s:.2f} s"
          f" | queued->started {r.queue_to_start_ms:.1f} ms",
          flush=True)
    print("      outside FFmpeg, ms: " + "  ".join(
        f"{k} {v * 1000:.0f}" for k, v in r.where().items()), flush=True)


async def overhead_rounds(stack: Stack, media: Media, out_dir: Path,
                          rounds: int, warmup: int) -> list[RoundResult]:
    print(f"fleet overhead: {rounds} round(s) after {warmup} untimed warm-up pair(s)", flush=True)
    for _ in range(warmup):  # first runs pay for page cache, fontconfig, consumer creation
        await run_raw(stack, media, out_dir / "raw.mp4")
        await run_fleet(stack, media.video, media.srt, out_dir / "fleet.mp4")
    results = []
    for n in range(rounds):
        results.append(await overhead_round(stack, media, out_dir, n))
        print_round(n, results[-1])
    return results


# ---------------------------------------------------------------- submit -> started latency


async def latency_loop(stack: Stack, media: Media, jobs: int) -> list[float]:
    """Tiny jobs on inputs uploaded once; each finishes before the next is submitted, so the
    agent is idle and long-polling when a job lands, as a warm agent would be."""
    vf = stack.client
    job = CaptionJob(video=await vf.upload_input(media.tiny_video),
                     srt=await vf.upload_input(media.tiny_srt), cache=False)  # runs each
    samples = []
    for _ in range(jobs):
        receipt = await vf.submit(job)
        done = await vf.result(receipt.job_id, timeout_s=JOB_TIMEOUT_S)
        if not isinstance(done, Succeeded):
            raise RuntimeError(f"tiny job {receipt.job_id} did not succeed: {done}")
        samples.append(await queue_to_start_ms(vf, receipt.job_id))
    print(f"submit->started, {jobs} tiny jobs: "
          + " ".join(f"{ms:.1f}" for ms in samples) + " ms", flush=True)
    return samples


# ---------------------------------------------------------------- object-store transfer


@dataclass(frozen=True)
class TransferRound:
    upload_mbps: float
    builtin_upload_mbps: float
    ours_mbps: float
    builtin_mbps: float

    @property
    def ratio(self) -> float:
        return self.ours_mbps / self.builtin_mbps

    @property
    def upload_ratio(self) -> float:
        return self.upload_mbps / self.builtin_upload_mbps


async def timed_mbps(size_bytes: int, action: Callable[[], Awaitable[object]]) -> float:
    t0 = time.perf_counter()
    await action()
    return size_bytes / (time.perf_counter() - t0) / 1e6


async def builtin_put(js: JetStreamContext, name: str, source: Path) -> None:
    """nats-py's put, with our chunk size: what our upload was until it sent chunks without
    waiting for each one's store."""
    meta = ObjectMeta(name=name, options=ObjectMetaOptions(max_chunk_size=CHUNK_SIZE_BYTES))
    with open(source, "rb") as f:
        await (await js.object_store(inputs_bucket(DEFAULT_TENANT))).put(name, f, meta=meta)


async def builtin_get(js: JetStreamContext, name: str, dest: Path) -> None:
    with open(dest, "wb") as f:
        await (await js.object_store(inputs_bucket(DEFAULT_TENANT))).get(name, writeinto=f)


async def transfer_round(js: JetStreamContext, media: Media, out_dir: Path,
                         n: int) -> TransferRound:
    name = f"bench/{secrets.token_hex(6)}/blob.bin"
    size = media.blob_bytes
    bucket = inputs_bucket(DEFAULT_TENANT)
    store = await js.object_store(bucket)
    ups: dict[str, float] = {}
    for which in ("ours", "builtin") if n % 2 == 0 else ("builtin", "ours"):
        if which == "ours":
            ups[which] = await timed_mbps(size, lambda: upload(js, bucket, name, media.blob))
        else:
            ups[which] = await timed_mbps(size, lambda: builtin_put(js, f"{name}.put",
                                                                     media.blob))
            await store.delete(f"{name}.put")
    up = ups["ours"]
    dest = out_dir / "blob.out"
    speeds: dict[str, float] = {}
    readers = {"ours": lambda: download(js, bucket, name, dest),
               "builtin": lambda: builtin_get(js, name, dest)}
    for which in ("ours", "builtin") if n % 2 == 0 else ("builtin", "ours"):
        speeds[which] = await timed_mbps(size, readers[which])
        if dest.stat().st_size != size:
            raise RuntimeError(f"{which} download wrote {dest.stat().st_size} of {size} bytes")
        dest.unlink()
    await (await js.object_store(bucket)).delete(name)  # keep the data dir small
    result = TransferRound(up, ups["builtin"], speeds["ours"], speeds["builtin"])
    print(f"  round {n + 1} ({'ours' if n % 2 == 0 else 'built-in'} first): upload "
          f"{up:6.1f} MB/s  built-in {ups['builtin']:6.1f} MB/s  download ours "
          f"{result.ours_mbps:6.1f} MB/s  built-in "
          f"{result.builtin_mbps:6.1f} MB/s  ratio {result.ratio:.2f}x", flush=True)
    return result


async def transfer_rounds(js: JetStreamContext, media: Media, out_dir: Path,
                          rounds: int) -> list[TransferRound]:
    print(f"object store, {media.blob_bytes / 1e6:.0f} MB random file: {rounds} round(s)",
          flush=True)
    return [await transfer_round(js, media, out_dir, n) for n in range(rounds)]


# ---------------------------------------------------------------- report


@dataclass
class Report:
    encoder: str
    encoder_failures: dict[str, str]
    rounds: list[RoundResult] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    transfers: list[TransferRound] = field(default_factory=list)


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def machine_facts() -> list[tuple[str, str]]:
    ffmpeg = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout
    nats = subprocess.run([find_nats_server(), "--version"], capture_output=True, text=True)
    return [("nproc", str(len(os.sched_getaffinity(0)))),
            ("ffmpeg", ffmpeg.splitlines()[0]),
            ("nats-server", nats.stdout.strip() or nats.stderr.strip()),
            ("python", sys.version.split()[0])]


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def summary_rows(rep: Report) -> list[tuple[str, str, str]]:
    med = statistics.median
    ratio = med(r.ratio for r in rep.rounds)
    p50 = percentile(rep.latencies_ms, 50)
    dl_ratio = med(t.ratio for t in rep.transfers)
    return [
        ("video encoder (agent probe)", rep.encoder, ""),
        ("raw FFmpeg caption, median", f"{med(r.raw_s for r in rep.rounds):.2f} s", ""),
        ("fleet path, median", f"{med(r.fleet_s for r in rep.rounds):.2f} s", ""),
        ("fleet / raw, median of rounds", f"{ratio:.3f}",
         f"<= {OVERHEAD_TARGET:.2f}: {verdict(ratio <= OVERHEAD_TARGET)}"),
        ("fleet time outside FFmpeg, median",
         f"{med(r.outside_ffmpeg_s for r in rep.rounds):.2f} s", ""),
        *((f"  of which {k}, median", f"{med(r.where()[k] for r in rep.rounds) * 1000:.0f} ms",
           "") for k in rep.rounds[0].where()),
        (f"submit->started p50 (n={len(rep.latencies_ms)})", f"{p50:.1f} ms",
         f"<= {LATENCY_P50_TARGET_MS:.0f} ms: {verdict(p50 <= LATENCY_P50_TARGET_MS)}"),
        ("submit->started p99", f"{percentile(rep.latencies_ms, 99):.1f} ms", ""),
        ("object upload, median", f"{med(t.upload_mbps for t in rep.transfers):.1f} MB/s", ""),
        ("upload, nats-py put, median",
         f"{med(t.builtin_upload_mbps for t in rep.transfers):.1f} MB/s", ""),
        ("upload ours / built-in, median of rounds",
         f"{med(t.upload_ratio for t in rep.transfers):.2f}x", ""),
        ("download, broker.objects, median",
         f"{med(t.ours_mbps for t in rep.transfers):.1f} MB/s", ""),
        ("download, nats-py get, median",
         f"{med(t.builtin_mbps for t in rep.transfers):.1f} MB/s", ""),
        ("download ours / built-in, median of rounds", f"{dl_ratio:.2f}x",
         f">= {DOWNLOAD_RATIO_TARGET:.0f}x: {verdict(dl_ratio >= DOWNLOAD_RATIO_TARGET)}"),
    ]


def print_summary(rep: Report) -> None:
    rows = summary_rows(rep) + [(k, v, "") for k, v in machine_facts()]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    header = ("figure", "value", "target")
    widths = [max(w, len(h)) for w, h in zip(widths, header[:2], strict=True)]
    print("\nsummary")
    print(f"{header[0]:<{widths[0]}} | {header[1]:<{widths[1]}} | {header[2]}")
    print(f"{'-' * widths[0]}-|-{'-' * widths[1]}-|-{'-' * 20}")
    for name, value, target in rows:
        print(f"{name:<{widths[0]}} | {value:<{widths[1]}} | {target}".rstrip())
    if rep.encoder_failures:
        print("encoders skipped by the probe: " + "; ".join(
            f"{k}: {v}" for k, v in rep.encoder_failures.items()))


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="raw/fleet rounds (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed raw+fleet pairs first")
    p.add_argument("--latency-jobs", type=int, default=30, help="tiny jobs for the latency loop")
    p.add_argument("--transfer-rounds", type=int, default=5, help="object-store rounds")
    p.add_argument("--transfer-mb", type=float, default=50.0, help="random file size, MB")
    p.add_argument("--video-seconds", type=float, default=10.0, help="test video length")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 rounds, 5 tiny jobs, 2x10 MB transfers, 4 s video")
    p.add_argument("--log-level", default="WARNING", help="vidfleet/nats-server log level")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.latency_jobs, args.transfer_rounds = 2, 5, 2
        args.transfer_mb, args.video_seconds = 10.0, 4.0
    return args


async def run(args: argparse.Namespace, root: Path) -> Report:
    print(f"generating media in {root} ...", flush=True)
    media = make_media(root, args)
    out_dir = root / "out"
    out_dir.mkdir()
    async with running_stack(root) as stack:
        assert stack.agent.encoders is not None
        print(f"stack up: {stack.server.url}, agent {stack.agent.agent_id} on "
              f"{stack.agent.encoders.h264}", flush=True)
        rep = Report(stack.agent.encoders.h264, dict(stack.agent.encoders.failures))
        rep.rounds = await overhead_rounds(stack, media, out_dir, args.rounds, args.warmup)
        rep.latencies_ms = [r.queue_to_start_ms for r in rep.rounds]
        rep.latencies_ms += await latency_loop(stack, media, args.latency_jobs)
        rep.transfers = await transfer_rounds(stack.js, media, out_dir, args.transfer_rounds)
    return rep


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging("bench", level=args.log_level)
    with tempfile.TemporaryDirectory(prefix="vidfleet-bench-") as tmp:
        report = asyncio.run(run(args, Path(tmp)))
    print_summary(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
