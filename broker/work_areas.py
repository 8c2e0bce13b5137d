"""Agents' work areas on a machine's disk, and how a dead agent's area is told from a live one's.

Each agent works in ``vidfleet-agent-<agent id>`` under its work directory and holds an
exclusive ``flock`` on the area's ``.lock`` while it lives (gpu_agent/workspace.py). The kernel
drops a process's locks when it dies, however it dies, so an area whose lock can be taken
belongs to an agent that is gone, and may be removed by anyone: the next agent starting there,
or the local provider that ran the dead one (controller/providers/local.py). Removing a live
agent's area would delete the job it is encoding; leaving a dead one's fills the disk.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

__all__ = ["AREA_PREFIX", "LOCK_NAME", "live_agents", "remove_abandoned"]

AREA_PREFIX = "vidfleet-agent-"
LOCK_NAME = ".lock"


def remove_abandoned(root: str | os.PathLike[str]) -> list[str]:
    """Remove every area under ``root`` whose agent is gone; the names removed."""
    base = Path(root)
    if not base.is_dir():
        return []
    areas = sorted(base.glob(f"{AREA_PREFIX}*"))
    return [area.name for area in areas if _remove_if_abandoned(area)]


def live_agents(root: str | os.PathLike[str]) -> set[str]:
    """The ids of the agents working under ``root`` now (their areas' locks are held)."""
    base = Path(root)
    if not base.is_dir():
        return set()
    live = set()
    for area in base.glob(f"{AREA_PREFIX}*"):
        try:
            fd = os.open(area / LOCK_NAME, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            live.add(area.name.removeprefix(AREA_PREFIX))
        finally:
            os.close(fd)  # (a lock we took goes with the descriptor)
    return live


def _remove_if_abandoned(area: Path) -> bool:
    try:
        fd = os.open(area / LOCK_NAME, os.O_RDWR)
    except OSError:  # no lock yet (being set up right now), or not an area of ours
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False  # its agent lives
    try:
        shutil.rmtree(area, ignore_errors=True)
        return True
    finally:
        os.close(fd)
