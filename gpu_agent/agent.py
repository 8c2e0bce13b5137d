"""The agent: connect outbound, probe encoders, then ask the dispatcher for jobs (one at a time
per slot: gpu_agent/slots.py) until told to stop.

``Agent.run(stop)`` owns its connection, heartbeat task and work directory. Setting ``stop``
(the first SIGTERM), a ``drain`` command from the controller on ``agents.<id>.control``, or the
dead-man switch (gpu_agent/deadman.py) stops asking and lets the jobs in hand finish within
``drain_timeout_s``; past that, or on a second signal (``force``), they are released for
other agents and the agent exits. Nothing connects into the agent; it needs only outbound
access to NATS, and it uses no JetStream: jobs, inputs, reports and results all go through
the controller's dispatcher (broker/dispatch.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec
import nats.errors
from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg

from broker.connect import connect
from broker.creds import LiveCredentials
from broker.fleet import decode_command
from broker.heartbeats import AgentState, Heartbeat, encode_heartbeat
from broker.subjects import (
    agent_control_subject,
    agent_inbox_prefix,
    heartbeat_subject,
)
from broker.url_guard import parse_networks
from broker.url_transport import GuardedTransport
from gpu_agent.build import build_id
from gpu_agent.config import AgentConfig, agent_credentials
from gpu_agent.deadman import DeadManSwitch, destroy_own_instance
from gpu_agent.dispatch_link import DispatchLink
from gpu_agent.fonts import find_fonts_dir, font_families
from gpu_agent.inputs import InputFetcher
from gpu_agent.operations import Operations
from gpu_agent.probe import EncoderProbe, probe_encoders
from gpu_agent.renewal import keep_credentials
from gpu_agent.slots import Slots
from gpu_agent.throughput import measure_throughput, slots_for
from gpu_agent.worker import JobOutcome, Worker
from gpu_agent.workspace import Workspace

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["Agent", "default_agent_id"]


def default_agent_id() -> str:
    host = "".join(c for c in socket.gethostname().split(".")[0] if c.isalnum() or c in "-_")
    return f"agent-{host[:24] or 'host'}-{secrets.token_hex(3)}"


class Agent:
    def __init__(self, config: AgentConfig, *, clock: Callable[[], float] = time.time,
                 on_outcome: Callable[[JobOutcome], None] | None = None,
                 probe: Callable[[str], Awaitable[EncoderProbe]] = probe_encoders) -> None:
        """``on_outcome`` is told how each delivered job ended (for metrics and tests);
        ``probe`` finds the encoders that work, given the ffmpeg binary (one test encode
        each: nearly a second of two cores, which a test suite starting a hundred agents on
        one machine pays once)."""
        self.config = config
        self._probe = probe
        self._on_outcome = on_outcome
        self.agent_id = config.agent_id or default_agent_id()
        self._clock = clock
        self._stopped = False
        self.slots: Slots | None = None  # the jobs in hand, once connected
        self.throughput_fps: list[float] = []  # gpu_agent/throughput.py, with slots > 1
        self.encoders: EncoderProbe | None = None
        self.build = ""  # gpu_agent/build.py, once probed
        self.ready = asyncio.Event()  # set once it asks the dispatcher for work

    @property
    def state(self) -> AgentState:
        if self._stopped:
            return "stopped"
        return "busy" if self.slots is not None and self.slots.jobs else "idle"

    @property
    def jobs_done(self) -> int:
        return self.slots.jobs_done if self.slots is not None else 0

    async def run(self, stop: asyncio.Event, force: asyncio.Event | None = None) -> None:
        force = force or asyncio.Event()
        halt = asyncio.Event()  # stop, a drain command, or the dead-man switch
        deadman = asyncio.Event()
        log = logger.bind(agent_id=self.agent_id)
        self.encoders = await self._probe(self.config.ffmpeg)
        fonts_dir = find_fonts_dir(self.config.fonts_dir)
        self.build = await build_id(self.config.ffmpeg, self.encoders, fonts_dir)
        log.info("encoder probe: using {encoder}; unavailable: {failures}; build {build}",
                 encoder=self.encoders.h264, failures=self.encoders.failures,
                 build=self.build)
        # Its own locked area; the areas of agents that died here go first.
        self.workspace = Workspace.open(self.config.work_dir, self.agent_id)
        credentials = agent_credentials(self.config)
        lost = asyncio.Event()  # closed for good by the server: revoked or expired credentials
        closing = False

        async def on_closed() -> None:
            if not closing:
                lost.set()

        nc = await self._connect_or_give_up(credentials, on_closed, stop, log)
        if nc is None:  # stopped, or never reached NATS within the dead-man time
            self.workspace.close()
            if not stop.is_set() and self.config.container_id:
                await self._destroy_own_instance()
            return
        try:
            # Everything about a job goes through the dispatcher: the agent uses no JetStream.
            link = DispatchLink(nc, self.agent_id, price_per_hour=self.config.price_per_hour,
                                build=self.build, slots=await self._slot_count(log))
            self.slots = Slots(link, await self._make_worker(link, fonts_dir, self.workspace),
                               fetch_timeout_s=self.config.fetch_timeout_s, log=log,
                               on_outcome=self._on_outcome)
            await nc.subscribe(agent_control_subject(self.agent_id),
                               cb=self._command_handler(nc, halt, log))
            switch = DeadManSwitch(deadman_s=self.config.deadman_s, clock=self._clock,
                                   busy=lambda: self.state == "busy")
            async with asyncio.TaskGroup() as tg:
                helpers = [tg.create_task(self._heartbeats(nc, halt)),
                           tg.create_task(_force_after_drain(halt, force,
                                                             self.config.drain_timeout_s)),
                           tg.create_task(_set_when(stop, halt)),
                           tg.create_task(_set_when(deadman, halt)),
                           tg.create_task(_set_when(lost, halt)),
                           tg.create_task(_set_when(lost, force)),
                           tg.create_task(switch.run(nc, deadman))]
                if credentials is not None and credentials.expires_at is not None:
                    helpers.append(tg.create_task(keep_credentials(
                        nc, credentials, self.agent_id, log, clock=self._clock)))
                self.ready.set()
                await self.slots.run(halt, force)
                for task in helpers:
                    task.cancel()
        finally:
            self._stopped = True
            self.workspace.close()
            if not nc.is_closed:
                with contextlib.suppress(nats.errors.Error):
                    await self._publish_heartbeat(nc)
                closing = True
                await nc.drain()
            log.info("agent stopped after {n} job(s)", n=self.jobs_done)
        # No controller, or credentials lost for good (revoked, or expired while the controller
        # was away): either way nothing will use this machine again, so it must not bill on.
        if (deadman.is_set() or lost.is_set()) and self.config.container_id:
            await self._destroy_own_instance()
        if lost.is_set():
            raise RuntimeError("the server closed the connection for good (credentials "
                               "revoked or expired); any job in hand goes to another agent")

    async def _connect_or_give_up(self, credentials: LiveCredentials | None,
                                  on_closed: Callable[[], Awaitable[None]],
                                  stop: asyncio.Event, log: Logger) -> Client | None:
        """Connect, retrying for as long as it takes, unless ``stop`` comes first (a SIGTERM
        must work while NATS is unreachable) or, with a dead-man time, NATS stays out of
        reach that long: a machine that can never connect must not bill forever. None then."""
        connecting = asyncio.create_task(connect(
            self.config.nats_url, name=self.agent_id,
            inbox_prefix=agent_inbox_prefix(self.agent_id), credentials=credentials,
            tls_ca_file=self.config.tls_ca_file, closed_cb=on_closed))
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({connecting, stopped}, timeout=self.config.deadman_s or None,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if connecting.done():
            return connecting.result()
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError, nats.errors.Error, OSError):
            await connecting
        if stop.is_set():
            log.info("stopped before NATS could be reached")
        else:
            log.error("NATS unreachable for {s:g} s (the dead-man time): stopping",
                      s=self.config.deadman_s)
        return None

    async def _slot_count(self, log: Logger) -> int:
        """How many jobs to run at once: 1, or what the controller allows and the measured
        throughput at 1..N encodes at once bears out."""
        if self.config.slots == 1:
            return 1
        assert self.encoders is not None
        self.throughput_fps = await measure_throughput(self.config.ffmpeg, self.encoders.h264,
                                                       self.config.slots)
        slots = slots_for(self.throughput_fps, self.config.slots_min_gain)
        log.info("throughput with 1..{n} encodes at once: {fps} frames/s; running {slots} "
                 "job(s) at once", n=self.config.slots, fps=self.throughput_fps, slots=slots)
        return slots

    async def _destroy_own_instance(self) -> None:
        await destroy_own_instance(base_url=self.config.vast_url,
                                   instance_id=self.config.container_id,
                                   key=self.config.container_api_key)

    def _command_handler(self, nc: Client, halt: asyncio.Event,
                         log: Logger) -> Callable[[Msg], Awaitable[None]]:
        async def on_command(msg: Msg) -> None:
            try:
                command = decode_command(msg.data)
            except msgspec.DecodeError:
                log.warning("undecodable command ignored")
                return
            if command.command == "cancel":
                if self.slots is not None:
                    self.slots.cancel(command.tenant, command.job_id)
                return
            log.info("controller says {command} ({reason}): finishing up",
                     command=command.command, reason=command.reason)
            halt.set()
            with contextlib.suppress(nats.errors.Error):  # tell it at once, not next beat
                await self._publish_heartbeat(nc, draining=True)
        return on_command

    async def _make_worker(self, link: DispatchLink, fonts_dir: str,
                           workspace: Workspace) -> Worker:
        assert self.encoders is not None
        fetcher = InputFetcher(link, max_bytes=self.config.max_input_bytes,
                               url_timeout_s=self.config.url_timeout_s,
                               url_total_timeout_s=self.config.url_total_timeout_s,
                               url_min_bytes_per_s=self.config.url_min_bytes_per_s,
                               url_slow_window_s=self.config.url_slow_window_s,
                               transport=functools.partial(GuardedTransport, parse_networks(
                                   self.config.url_allow_networks)))
        ops = Operations(results=link, config=self.config, encoders=self.encoders,
                         fonts_dir=fonts_dir, fetcher=fetcher,
                         font_families=await font_families(), clock=self._clock)
        return Worker(link=link, config=self.config, agent_id=self.agent_id, operations=ops,
                      workspace=workspace, build=self.build, clock=self._clock)

    async def _heartbeats(self, nc: Client, stop: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(nats.errors.Error):
                await self._publish_heartbeat(nc, draining=stop.is_set())
            await asyncio.sleep(self.config.heartbeat_interval_s)

    async def _publish_heartbeat(self, nc: Client, draining: bool = False) -> None:
        state: AgentState = "draining" if draining and self.state != "stopped" else self.state
        jobs = self.slots.jobs if self.slots is not None else []
        hb = Heartbeat(agent_id=self.agent_id, state=state,
                       at=self._clock(), encoder=self.encoders.h264 if self.encoders else "",
                       job_id=jobs[0] if jobs else None, jobs=jobs,
                       slots=self.slots.slots if self.slots is not None else 1,
                       throughput_fps=self.throughput_fps, jobs_done=self.jobs_done,
                       interval_s=self.config.heartbeat_interval_s)
        await nc.publish(heartbeat_subject(self.agent_id), encode_heartbeat(hb))


async def _set_when(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


async def _force_after_drain(stop: asyncio.Event, force: asyncio.Event,
                             drain_timeout_s: float) -> None:
    """Once stopping, give the job in hand ``drain_timeout_s`` to finish, then release it."""
    await stop.wait()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(force.wait(), drain_timeout_s)
    force.set()
