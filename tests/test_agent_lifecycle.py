"""Graceful stop: SIGTERM finishes the job in hand, stops pulling, exits 0; a forced stop
hands the job back at once; an agent that cannot reach NATS still stops, and still does not
bill forever."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from broker.config import Secret
from broker.events import Progress, Succeeded
from broker.jobs import CaptionJob
from gpu_agent.agent import Agent
from gpu_agent.config import AgentConfig
from tests.conftest import agent_config, agent_process, running_agent
from tests.fakes.vast import FakeContainer, FakeVast, booted_instance
from tests.media import make_video


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_sigterm_finishes_the_running_job_then_exits_0(
        nc, js, client, nats_server, media_dir: Path, tmp_path: Path) -> None:
    video = make_video(tmp_path / "mid.mp4", seconds=30, size="640x360")
    async with agent_process(nc, nats_server, "term", tmp_path / "term") as proc:
        receipt = await client.submit(CaptionJob(video=await client.upload_input(video),
                                                 srt=await client.upload_input(
                                                     media_dir / "talk.srt")))
        second = await client.submit(CaptionJob(video=await client.upload_input(video),
                                                srt=await client.upload_input(
                                                    media_dir / "talk.srt")))
        async for event in client.watch(receipt.job_id, timeout_s=60):
            if isinstance(event, Progress):
                proc.send_signal(signal.SIGTERM)
                break
        done = await client.result(receipt.job_id, timeout_s=60)
        assert isinstance(done, Succeeded) and done.agent_id == "term" and done.attempt == 1
        assert await asyncio.wait_for(asyncio.to_thread(proc.wait), 30) == 0
    # It stopped pulling: the second job is still queued, untouched.
    info = await js.consumer_info("JOBS", "agents")
    assert info.num_pending == 1 and info.num_ack_pending == 0
    assert await _count_started(js, second.job_id) == 0


async def _count_started(js, job_id: str) -> int:
    info = await js.stream_info("EVENTS", subjects_filter=f"events.default.{job_id}.started.*")
    return sum((info.state.subjects or {}).values())


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_forced_stop_releases_the_job_to_another_agent(
        js, client, nats_server, media_dir: Path, tmp_path: Path, outcomes) -> None:
    video = make_video(tmp_path / "mid.mp4", seconds=30, size="640x360")
    config = agent_config(nats_server, tmp_path / "a1", agent_id="quitter", drain_timeout_s=0.0)
    async with running_agent(config, outcomes):
        receipt = await client.submit(CaptionJob(
            video=await client.upload_input(video),
            srt=await client.upload_input(media_dir / "talk.srt")))
        async for event in client.watch(receipt.job_id, timeout_s=60):
            if isinstance(event, Progress):
                break
    await outcomes.wait_for(receipt.job_id, "released")
    async with running_agent(agent_config(nats_server, tmp_path / "a2", agent_id="taker")):
        done = await client.result(receipt.job_id, timeout_s=90)
    assert isinstance(done, Succeeded) and done.agent_id == "taker" and done.attempt == 2


async def test_sigterm_stops_an_agent_that_cannot_reach_nats(tmp_path: Path) -> None:
    """The first connect retries forever; a SIGTERM meanwhile must still end the process."""
    env = {**os.environ, "VIDFLEET_NATS_URL": f"nats://127.0.0.1:{_closed_port()}",
           "VIDFLEET_WORK_DIR": str(tmp_path / "w")}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gpu_agent", env=env,
                                                stderr=asyncio.subprocess.PIPE)
    assert proc.stderr
    try:
        while b"Connect call failed" not in await asyncio.wait_for(proc.stderr.readline(), 30):
            pass
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_an_agent_that_never_reaches_nats_destroys_its_own_instance(
        tmp_path: Path) -> None:
    """No NATS for the dead-man time (a wrong URL, a firewall): nothing will ever use this
    machine, so it must not bill on."""
    with FakeVast(start_container=FakeContainer) as fake:
        instance_id, key = booted_instance(fake)
        config = AgentConfig(nats_url=f"nats://127.0.0.1:{_closed_port()}",
                             work_dir=str(tmp_path / "w"), deadman_s=1.0, vast_url=fake.url,
                             container_id=str(instance_id), container_api_key=Secret(key))
        await asyncio.wait_for(Agent(config).run(asyncio.Event()), 30)
        [gone] = fake.instances(include_destroyed=True)
        assert gone.destroyed


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_SIGNALLED = """
import asyncio, signal
from broker.entrypoint import stop_signals

async def main():
    stop, force = stop_signals()
    # The test's "that was all": SIGWINCH (28) is handled after the signals sent before it,
    # even when they are pending together (the kernel delivers lower numbers first).
    done = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGWINCH, done.set)
    print("ready", flush=True)
    await stop.wait()
    print("stopping", flush=True)
    await done.wait()
    print("force" if force.is_set() else "stop", flush=True)

asyncio.run(main())
"""


async def _signalled(*, orphaned: bool, signals: list[signal.Signals]) -> str:
    """What a process using stop_signals makes of ``signals``, each sent once the one
    before was heard, with its parent alive or dead (``orphaned``: the kernel's
    parent-death signal, which can come more than once)."""
    parent = await asyncio.create_subprocess_exec(
        "sh", "-c", f'{sys.executable} -c "$0" & echo $!; wait', _SIGNALLED,
        stdout=asyncio.subprocess.PIPE)
    assert parent.stdout
    child = int(await parent.stdout.readline())
    assert (await parent.stdout.readline()).strip() == b"ready"
    if orphaned:  # the child is re-parented as its parent exits, before the pidfd says so
        parent.kill()
        await _exited(parent.pid)
        assert _parent_of(child) != parent.pid
    for n, sig in enumerate(signals):
        os.kill(child, sig)
        if n == 0:
            line = await asyncio.wait_for(parent.stdout.readline(), 10)
            assert line.strip() == b"stopping"
    os.kill(child, signal.SIGWINCH)
    answer = (await asyncio.wait_for(parent.stdout.readline(), 10)).decode().strip()
    await asyncio.wait_for(parent.wait(), 10)
    return answer


async def _exited(pid: int) -> None:
    """Until ``pid`` has exited (its pidfd turns readable; it may not be reaped yet)."""
    fd = os.pidfd_open(pid)
    ended = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(fd, ended.set)
    try:
        await asyncio.wait_for(ended.wait(), 10)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


async def test_a_parent_death_signal_stops_and_never_forces() -> None:
    # Twice, as the kernel sends it for a multi-threaded parent (once per thread, while the
    # parent's pid still answers getppid): still "finish the job".
    assert await _signalled(orphaned=False, signals=[signal.SIGHUP, signal.SIGHUP]) == "stop"
    # Any signal once the parent is gone: a stop, never a force.
    assert await _signalled(orphaned=True, signals=[signal.SIGTERM, signal.SIGTERM]) == "stop"
    # The same from a live parent (a person's second Ctrl-C): hand the job back.
    assert await _signalled(orphaned=False,
                            signals=[signal.SIGTERM, signal.SIGTERM]) == "force"
    # The force signal a parent sends, which cannot merge with a SIGTERM into one.
    assert await _signalled(orphaned=False, signals=[signal.SIGUSR1]) == "force"
