"""The local provider: agents as subprocesses of the controller (the embedded default).

Offers are free "slots" up to ``max_agents``; a machine id is a slot number. Terminating sends
SIGTERM (the agent finishes or hands back its job) and SIGKILLs after ``grace_s``. On Linux an
agent also gets SIGTERM when the controller dies, however it dies: a restarted controller
cannot see the old one's children, so they must not outlive it (they finish their job first).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import sys
import tempfile
import time
from collections.abc import Callable

import msgspec
from loguru import logger

from broker.entrypoint import FORCE_SIGNAL, PARENT_DEATH_SIGNAL
from broker.work_areas import live_agents, remove_abandoned
from controller.policy import Offer
from controller.providers.base import InstanceInfo, NoCapacity

__all__ = ["LocalProvider"]


_PR_SET_PDEATHSIG = 1


def _term_with_parent() -> None:
    """In the child before exec: stop me when my parent dies (Linux; elsewhere a no-op).
    Its own signal, not SIGTERM: the kernel sends it once per thread of the parent as they
    die, and the parent's pid stays the same until the last one has, so two SIGTERMs would
    read as a person's second Ctrl-C and hand the job back."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, PARENT_DEATH_SIGNAL)


class LocalProvider:
    name = "local"
    lists_own_only = True  # a restarted controller does not see the earlier one's agents
    offers_ttl_s = 0.0  # its "search" is a look at its own slots

    def __init__(self, *, max_agents: int, base_env: dict[str, str] | None = None,
                 python: str = sys.executable, grace_s: float = 30.0,
                 work_root: str = "", log_dir: str = "",
                 clock: Callable[[], float] = time.time) -> None:
        """``work_root``: where the agents work, each in an area of its own (default: the
        system's temp dir); ``log_dir``: each agent logs to <log_dir>/<label>.log (default:
        our stderr)."""
        self._max_agents = max_agents
        self._work_root = work_root or tempfile.gettempdir()
        self._log_dir = log_dir
        self._base_env = dict(os.environ if base_env is None else base_env)
        self._python = python
        self._grace_s = grace_s
        self._clock = clock
        self._procs: dict[str, tuple[asyncio.subprocess.Process, InstanceInfo]] = {}

    def _free_slots(self) -> list[int]:
        """Slots no agent runs in: ours, and those an earlier controller's agents still
        take while they finish their jobs (their work areas are locked), so a restart never
        runs more than ``max_agents`` on this machine."""
        running = {info.label: info.machine_id for proc, info in self._procs.values()
                   if proc.returncode is None}
        adrift = len(live_agents(self._work_root) - set(running))
        free = [n for n in range(1, self._max_agents + 1) if n not in running.values()]
        return free[:max(0, len(free) - adrift)]

    async def search_offers(self) -> list[Offer]:
        return [Offer(offer_id=slot, machine_id=slot, gpu_name="local", gpu_ram_mb=0,
                      price_per_hour=0.0, reliability=1.0, inet_down_mbps=10_000.0,
                      cuda_max_good=99.0) for slot in self._free_slots()]

    async def launch(self, offer: Offer, *, label: str, env: dict[str, str]) -> InstanceInfo:
        if offer.machine_id not in self._free_slots():
            raise NoCapacity(f"local slot {offer.machine_id} is taken")
        env = {**self._base_env, **env, "VIDFLEET_AGENT_ID": label}
        env["VIDFLEET_WORK_DIR"] = self._work_root
        log: int | None = None
        if self._log_dir:
            os.makedirs(self._log_dir, exist_ok=True)
            log = os.open(os.path.join(self._log_dir, f"{label}.log"),
                          os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            proc = await asyncio.create_subprocess_exec(
                self._python, "-m", "gpu_agent", env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=asyncio.subprocess.STDOUT if log is not None else None,
                start_new_session=True, preexec_fn=_term_with_parent)
        finally:
            if log is not None:
                os.close(log)
        info = InstanceInfo(provider_id=str(proc.pid), label=label, state="running",
                            machine_id=offer.machine_id, price_per_hour=0.0,
                            started_at=self._clock())
        self._procs[info.provider_id] = (proc, info)
        return info

    async def list_instances(self, label_prefix: str) -> list[InstanceInfo]:
        out = []
        for proc, info in self._procs.values():
            if info.label.startswith(label_prefix):
                state = "running" if proc.returncode is None else "exited"
                out.append(msgspec.structs.replace(info, state=state))
        if any(info.state == "exited" for info in out):
            self._sweep()
        return out

    def _sweep(self) -> None:
        """Remove the work areas of agents that died without removing their own (SIGKILL):
        their inputs and partial outputs would fill this machine's disk."""
        if removed := remove_abandoned(self._work_root):
            logger.info("removed the work areas of {n} dead agent(s): {areas}", n=len(removed),
                        areas=", ".join(removed))

    async def close(self, force: asyncio.Event) -> None:
        """Stop every agent: SIGTERM (each finishes its job), and the force signal when
        ``force`` is set (each hands its job back). Used when the controller exits."""
        procs = [proc for proc, _ in self._procs.values() if proc.returncode is None]

        async def second_signal() -> None:
            await force.wait()
            for proc in procs:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(FORCE_SIGNAL)

        forwarder = asyncio.create_task(second_signal())
        try:
            await asyncio.gather(*(self.terminate(pid) for pid in list(self._procs)))
        finally:
            forwarder.cancel()

    async def account_credit(self) -> float | None:
        return None  # this machine's own processes: nobody bills them

    async def terminate(self, provider_id: str) -> None:
        entry = self._procs.pop(provider_id, None)
        if entry is None:
            return
        proc, _ = entry
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), self._grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        self._sweep()

