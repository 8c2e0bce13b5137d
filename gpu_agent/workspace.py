"""Where an agent keeps its jobs' files: an area of its own under the work directory, locked
while the agent lives (the protocol is broker/work_areas.py), one temporary directory per job
inside it.

An agent that is SIGKILLed (or loses its machine's power) cannot delete what it was working
on: inputs and a partial output, gigabytes for a long video, on a disk the next agent needs.
So every agent, as it starts, removes the areas beside its own whose agent is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from loguru import logger

from broker.work_areas import AREA_PREFIX, LOCK_NAME, remove_abandoned

__all__ = ["Workspace"]


class Workspace:
    def __init__(self, area: Path, lock_fd: int) -> None:
        self.area = area
        self._lock_fd = lock_fd

    @classmethod
    def open(cls, root: str, agent_id: str) -> Workspace:
        """This agent's area under ``root`` (the system's temp dir when empty), locked; the
        areas of agents that died there are removed first."""
        base = Path(root or tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        if removed := remove_abandoned(base):
            logger.info("removed the work areas of {n} agent(s) gone: {areas}", n=len(removed),
                        areas=", ".join(removed))
        area = base / f"{AREA_PREFIX}{agent_id}"
        for _ in range(3):  # another agent's sweep may take the area between mkdir and lock
            area.mkdir(exist_ok=True)
            fd = os.open(area / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RuntimeError(f"another agent named {agent_id} works in {area}") from None
            if (area / LOCK_NAME).exists():
                break
            os.close(fd)
        else:
            raise RuntimeError(f"could not keep a work area at {area}")
        for leftover in area.iterdir():  # an earlier life of this very agent's
            if leftover.name != LOCK_NAME:
                shutil.rmtree(leftover, ignore_errors=True)
        return cls(area, fd)

    @contextlib.contextmanager
    def job_dir(self, job_id: str, attempt: int) -> Iterator[Path]:
        """A fresh directory for one attempt, deleted with everything in it afterwards."""
        path = Path(tempfile.mkdtemp(prefix=f"{job_id}-{attempt}-", dir=self.area))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        """Remove the area and let go of it (the agent is stopping)."""
        shutil.rmtree(self.area, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)
