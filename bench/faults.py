"""Fault injection: jobs through the whole stack while parts of it are killed, with figures.

Each scenario runs a fresh stack as ``vidfleet up`` runs it (operator mode, the controller with
the local provider, agents on demand), submits jobs of a few seconds each, does its damage,
and waits for every job to end:

    agents      SIGKILL a running agent every few seconds (at least --kills times), whatever
                it is doing: downloading inputs, encoding, uploading, between outcome and ack
    server      SIGKILL nats-server mid-run (the stack starts it again, same port and data)
    controller  SIGKILL the controller mid-run (the stack starts it again; its agents finish
                their jobs under the next one)
    sigterm     stop the whole stack with SIGTERM mid-job, start a new one on the same data
    fulldisk    the agents' work directory on a 6 MiB tmpfs, some inputs larger than that
                (root only)
    leader      a 3-node cluster (streams with 3 replicas): SIGKILL the node leading JOBS
                mid-run (the stack starts it again; it catches up from the others)
    nodedisk    a 3-node cluster with one node's JetStream store on a 48 MiB tmpfs, filled
                to the last byte mid-run (root only)

Per scenario: submitted / succeeded / failed (why) / lost (no outcome by the deadline) /
duplicated (more than one outcome event) / outputs whose SHA-256 is wrong / seconds to drain
(from the last fault to the last outcome) / processes and work areas left behind once the
stack stopped. The goal in every one: 0 lost, 0 duplicated, nothing left behind.

Run from the repository root: ``.venv/bin/python bench/faults.py [--scenario agents ...]
[--jobs 20] [--kills 10] [--seed 0]``. Figures go in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import nats.errors  # noqa: E402

from broker.connect import connect  # noqa: E402
from broker.creds import LiveCredentials  # noqa: E402
from broker.events import Failed, Succeeded  # noqa: E402
from broker.jobs import CaptionJob  # noqa: E402
from broker.logs import setup_logging  # noqa: E402
from broker.objects import digest_hex, object_info  # noqa: E402
from broker.subjects import EVENTS_STREAM, JOBS_STREAM  # noqa: E402
from broker.topology import TopologyConfig  # noqa: E402
from client.api import Client  # noqa: E402
from client.sample import make_sample, make_video  # noqa: E402
from client.stack import Stack, StackOptions  # noqa: E402

SCENARIOS = ("agents", "server", "controller", "sigterm", "fulldisk", "leader", "nodedisk")
_CLUSTERED = ("leader", "nodedisk")
_NEEDS_ROOT = ("fulldisk", "nodedisk")


@dataclass
class Figures:
    scenario: str
    submitted: int = 0
    succeeded: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    bad_sha: list[str] = field(default_factory=list)
    faults: int = 0
    last_fault_at: float = 0.0  # monotonic
    drain_s: float = 0.0
    processes_left: list[str] = field(default_factory=list)
    areas_left: list[str] = field(default_factory=list)
    rejoined_s: float | None = None  # leader: from its kill to JOBS current on all 3 again

    def line(self) -> str:
        failed = ", ".join(f"{code} {n}" for code, n in sorted(self.failed.items())) or "0"
        return (f"{self.scenario:<11} faults {self.faults:>2}  submitted {self.submitted:>3}  "
                f"succeeded {self.succeeded:>3}  failed {failed}  lost {len(self.lost)}  "
                f"duplicated {len(self.duplicated)}  bad sha256 {len(self.bad_sha)}  "
                f"drain {self.drain_s:5.1f} s  left: {len(self.processes_left)} processes, "
                f"{len(self.areas_left)} work areas"
                + (f"  rejoined in {self.rejoined_s:.1f} s" if self.rejoined_s else ""))

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.bad_sha or self.processes_left
                    or self.areas_left)


# What JetStream reserves on each node for the streams' limits must fit the nodedisk
# scenario's small disk (a node's JetStream takes 75 % of its file system).
_SMALL = dict(events_max_bytes=32 << 20, tenant_events_max_bytes=8 << 20,
              jobstate_max_bytes=4 << 20, tenant_inputs_max_bytes=32 << 20,
              tenant_results_max_bytes=32 << 20, dead_letters_max_bytes=4 << 20,
              dead_letter_inputs_max_bytes=16 << 20)


def _options(data: Path, port: int = 0, cluster: int = 1, small: bool = False) -> StackOptions:
    return StackOptions(data_dir=data, port=port, max_agents=2, logs_to_files=True,
                        cluster=cluster,
                        topology=TopologyConfig(ack_wait_s=6.0, **(_SMALL if small else {})),
                        env={"VIDFLEET_TICK_S": "1", "VIDFLEET_IDLE_TIMEOUT_S": "5",
                             "VIDFLEET_HEARTBEAT_TIMEOUT_S": "10",
                             "VIDFLEET_AGENT_HEARTBEAT_INTERVAL_S": "1"},
                        agent_drain_timeout_s=120.0)


def _pids_with(needle: str) -> dict[int, str]:
    """Processes whose command line or environment mention ``needle`` (pid -> command)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if needle in cmd or needle in env:
            found[int(entry.name)] = cmd.strip()
    return found


def _agents(data: Path) -> list[int]:
    return [pid for pid, cmd in _pids_with(str(data / "work")).items() if "gpu_agent" in cmd]


async def _media(directory: Path, jobs: int, rng: random.Random) -> list[tuple[Path, Path]]:
    """A few clips of 3-8 s (720p: a second or two to encode here), reused across jobs."""
    clips = []
    for n in range(min(jobs, 4)):
        video, srt = await asyncio.to_thread(make_sample, directory / f"clip{n}",
                                             rng.randint(3, 8))
        clips.append((video, srt))
    return clips


async def run(scenario: str, *, jobs: int, kills: int, seed: int, root: Path) -> Figures:
    rng = random.Random(seed)
    figures = Figures(scenario)
    data = root / "data"
    clips = await _media(root, jobs, rng)
    disk: Path | None = None
    if scenario == "fulldisk":
        disk = _tmpfs(data / "work", "6m")
        big = await asyncio.to_thread(make_video, root / "big.mp4", seconds=8)
        clips.append((big, clips[0][1]))
    elif scenario == "nodedisk":
        disk = _tmpfs(data / "nats" / "n3", "256m")
    try:
        return await _run(scenario, figures, data, clips, Stack(_options(
            data, cluster=3 if scenario in _CLUSTERED else 1, small=scenario == "nodedisk")),
            jobs, kills, rng)
    finally:
        if disk is not None:
            subprocess.run(["umount", "-l", str(disk)], check=False)


async def _run(scenario: str, figures: Figures, data: Path, clips: list[tuple[Path, Path]],
               stack: Stack, jobs: int, kills: int, rng: random.Random) -> Figures:
    await stack.start()
    figures.last_fault_at = time.monotonic()
    assert stack.creds_file is not None
    fleet = await connect(stack.url, name="faults",
                          credentials=LiveCredentials.from_creds(stack.creds_file.read_text()))
    try:
        async with await Client.connect(stack.url, creds_file=stack.creds_file) as vf:
            refs = [(await vf.upload_input(v), await vf.upload_input(s)) for v, s in clips]
            ids = []
            for n in range(jobs):
                video, srt = refs[n % len(refs)]
                job_id = f"{scenario}-{n}"
                await vf.submit(CaptionJob(video=video, srt=srt, cache=False), job_id=job_id)
                ids.append(job_id)
            figures.submitted = len(ids)
            ended = asyncio.Event()  # every job has its outcome: the damage stops
            damage = asyncio.create_task(_HARM[scenario](stack, data, figures, kills, rng,
                                                         ended))
            outcomes = await asyncio.gather(*(vf.result(i, timeout_s=jobs * 30 + 120)
                                              for i in ids), return_exceptions=True)
            ended.set()
            stack = await damage  # (sigterm: the stack it started anew)
            figures.drain_s = time.monotonic() - figures.last_fault_at
            for job_id, outcome in zip(ids, outcomes, strict=True):
                if isinstance(outcome, Succeeded):
                    figures.succeeded += 1
                    stored = await object_info(fleet.jetstream(), outcome.output.bucket,
                                               outcome.output.name)
                    if digest_hex(stored) != outcome.output.sha256:
                        figures.bad_sha.append(job_id)
                elif isinstance(outcome, Failed):
                    figures.failed[outcome.error.code] += 1
                else:
                    figures.lost.append(job_id)
            for job_id in ids:
                info = await fleet.jetstream().stream_info(EVENTS_STREAM,
                                               subjects_filter=f"events.default.{job_id}.*.*")
                ends = sum(n for subject, n in (info.state.subjects or {}).items()
                           if subject.split(".")[3] in ("succeeded", "failed", "cancelled"))
                if ends > 1:
                    figures.duplicated.append(job_id)
    finally:
        await fleet.close()
        await stack.stop()
        figures.processes_left = list(_pids_with(str(data)).values())
        work = data / "work"
        figures.areas_left = sorted(p.name for p in work.iterdir()) if work.is_dir() else []
    return figures


Harm = Callable[[Stack, Path, Figures, int, random.Random, asyncio.Event],
               Coroutine[object, object, Stack]]


def _tmpfs(path: Path, size: str) -> Path:
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True)
    return path


async def _once_running(data: Path, ended: asyncio.Event) -> None:
    """Wait until an agent is at work (its FFmpeg runs)."""
    while not any("ffmpeg" in cmd for cmd in _pids_with(str(data / "work")).values()):
        if ended.is_set():
            raise RuntimeError("every job ended before the fault could be made")
        await asyncio.sleep(0.1)


async def _kill_agents(stack: Stack, data: Path, figures: Figures, kills: int,
                       rng: random.Random, ended: asyncio.Event) -> Stack:
    while figures.faults < kills and not ended.is_set():
        await asyncio.sleep(rng.uniform(0.3, 1.5))  # any moment of a job's life
        agents = _agents(data)
        if not agents:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(rng.choice(agents), signal.SIGKILL)
            figures.faults += 1
            figures.last_fault_at = time.monotonic()
    return stack


async def _kill_server(stack: Stack, data: Path, figures: Figures, kills: int,
                       rng: random.Random, ended: asyncio.Event) -> Stack:
    await _once_running(data, ended)
    assert stack.server.pid is not None
    os.kill(stack.server.pid, signal.SIGKILL)
    figures.faults, figures.last_fault_at = 1, time.monotonic()
    return stack


async def _kill_controller(stack: Stack, data: Path, figures: Figures, kills: int,
                           rng: random.Random, ended: asyncio.Event) -> Stack:
    await _once_running(data, ended)
    pid = stack.controller_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    figures.faults, figures.last_fault_at = 1, time.monotonic()
    return stack


async def _sigterm_stack(stack: Stack, data: Path, figures: Figures, kills: int,
                         rng: random.Random, ended: asyncio.Event) -> Stack:
    await _once_running(data, ended)
    figures.faults, figures.last_fault_at = 1, time.monotonic()
    port = stack.server.port or 0
    await stack.stop()  # agents finish their jobs; the queue stays on disk
    again = Stack(_options(data, port))  # the same address: clients reconnect to it
    await again.start()
    return again


async def _kill_leader(stack: Stack, data: Path, figures: Figures, kills: int,
                       rng: random.Random, ended: asyncio.Event) -> Stack:
    await _once_running(data, ended)
    assert stack.creds_file is not None
    nc = await connect(stack.url, name="faults-leader",
                       credentials=LiveCredentials.from_creds(stack.creds_file.read_text()))
    try:
        info = await nc.jetstream().stream_info(JOBS_STREAM)
        assert info.cluster is not None and info.cluster.leader
        leader = stack.servers[int(info.cluster.leader.removeprefix("n")) - 1]
        assert leader.pid is not None
        os.kill(leader.pid, signal.SIGKILL)
        figures.faults, figures.last_fault_at = 1, time.monotonic()
        # The stack starts it again; it has rejoined once JOBS has all 3 replicas current.
        while figures.rejoined_s is None:
            await asyncio.sleep(0.5)
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                cluster = (await nc.jetstream().stream_info(JOBS_STREAM)).cluster
                peers = {p.name: p for p in (cluster.replicas or [])} if cluster else {}
                back = peers.get(str(info.cluster.leader))
                if (cluster and cluster.leader == info.cluster.leader) or (
                        back is not None and back.current and not back.offline
                        and (back.active or 0) < 2_000_000_000):  # heard within 2 s (ns)
                    figures.rejoined_s = time.monotonic() - figures.last_fault_at
    finally:
        await nc.close()
    return stack


async def _fill_node_disk(stack: Stack, data: Path, figures: Figures, kills: int,
                          rng: random.Random, ended: asyncio.Event) -> Stack:
    await _once_running(data, ended)
    filler = data / "nats" / "n3" / "filler"
    with contextlib.suppress(OSError), open(filler, "wb") as out:  # until ENOSPC
        while True:
            out.write(b"\0" * (1 << 20))
            out.flush()
    figures.faults, figures.last_fault_at = 1, time.monotonic()
    return stack


async def _nothing(stack: Stack, data: Path, figures: Figures, kills: int,
                   rng: random.Random, ended: asyncio.Event) -> Stack:
    return stack


_HARM: dict[str, Harm] = {"agents": _kill_agents, "server": _kill_server,
                          "controller": _kill_controller, "sigterm": _sigterm_stack,
                          "fulldisk": _nothing, "leader": _kill_leader,
                          "nodedisk": _fill_node_disk}


async def _main(args: argparse.Namespace) -> int:
    clean = True
    for scenario in args.scenario or SCENARIOS:
        if scenario in _NEEDS_ROOT and os.geteuid() != 0:
            print(f"{scenario:<11} skipped: mounting a tmpfs needs root")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            figures = await run(scenario, jobs=args.jobs, kills=args.kills, seed=args.seed,
                                root=Path(tmp))
        print(figures.line(), flush=True)
        for name in ("lost", "duplicated", "bad_sha", "processes_left", "areas_left"):
            if getattr(figures, name):
                print(f"  {name}: {getattr(figures, name)}")
        clean = clean and figures.clean
    return 0 if clean else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", action="append", choices=SCENARIOS)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    setup_logging("faults", level="WARNING")
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
